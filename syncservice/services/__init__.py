"""Write-side services of the provisioning service, one module per sub-domain."""
