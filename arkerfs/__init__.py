"""arkerfs: mount an Arker VM's /home/user locally.

Subpackages, one job each:

- ``arkerfs.client``  the public async Arker SDK (httpx under trio)
- ``arkerfs.server``  the local Arker-compatible server (``arkerfs serve``)
- ``arkerfs.fs``      the FUSE-free filesystem model: remote operations, caches, buffers
- ``arkerfs.mount``   the pyfuse3 adapter and the mount/umount lifecycle
"""

__version__ = "0.1.0"
