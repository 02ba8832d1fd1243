"""Tests of the HTTP backends against simulators and a real SCIM server on loopback."""
