"""Start a command and report its peak RSS: ``python -S bench/launch.py CMD ARGS...``.

Linux carries a process's peak RSS across fork and exec, so a worker started straight from the bench (whose
own memory grows with the generated payloads) would report the bench's peak, not its own. This launcher is
tiny (no site, no imports but os and sys): the command forks from it, and its peak is its own. The last line
on stdout is ``BENCH_MAXRSS_KIB=<peak RSS of the command in KiB>``; the exit code is the command's.
"""

import os
import sys

pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stdout.flush()
os.write(1, f"\nBENCH_MAXRSS_KIB={usage.ru_maxrss}\n".encode())
sys.exit(os.waitstatus_to_exitcode(status))
