"""Building the appliance's SD card image from a stock Raspberry Pi OS Lite image.

Everything here works on image files with user-space tools (sfdisk, mtools,
e2fsprogs): no loop mounts, no chroot, no root. It is a workstation's job,
imported only by `typewriter image ...`.
"""
