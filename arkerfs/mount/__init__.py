"""The kernel side of arkerfs: the pyfuse3 adapter, the mount lifecycle and its commands.

- ``ops``      pyfuse3.Operations: thin translation onto ``arkerfs.fs.vfs.VFS``, one error boundary
- ``daemon``   resolve + probe → pyfuse3.init → serve → push pending → close; the result file
- ``command``  ``arkerfs mount``: checks, detaching (parent waits for readiness on a pipe)
- ``umount``   ``arkerfs umount``: SIGTERM to the daemon, wait, report unpushed data; stale mounts
- ``runtime``  state/result/log files per mount point, the mount table, daemon liveness
- ``logs``     logging and faulthandler setup for the daemon

Only ``ops`` and ``daemon`` import pyfuse3, and only when a mount actually starts.
"""
