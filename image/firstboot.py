"""First-boot configuration on the boot partition, in the form the release reads.

Trixie-based images run cloud-init from a NoCloud seed (`user-data`, `meta-data`,
`network-config`); Bookworm-based ones run raspberrypi-sys-mods' `init_config` on
`custom.toml`. Either way: the admin user with the maker's key and no password
login, the hostname, SSH on, Wi-Fi left alone (the appliance needs no network).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Dict

from image.target import Target
from image.tools import run

ADMIN_GROUPS = ["adm", "dialout", "gpio", "audio", "sudo", "users", "plugdev", "netdev"]


def boot_files(target: Target, hostname: str, user: str, ssh_key: str) -> Dict[str, str]:
    """file name on the boot partition -> its text."""
    if target.cloud_init:
        return cloud_init(hostname, user, ssh_key)
    return {"custom.toml": custom_toml(hostname, user, ssh_key)}


def cloud_init(hostname: str, user: str, ssh_key: str) -> Dict[str, str]:
    # JSON is YAML: no hand-quoting of keys or names.
    user_data = {
        "hostname": hostname,
        "manage_etc_hosts": True,
        "users": [{
            "name": user,
            "groups": ",".join(ADMIN_GROUPS),
            "shell": "/bin/bash",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "lock_passwd": True,
            "ssh_authorized_keys": [ssh_key],
        }],
        "ssh_pwauth": False,
        "disable_root": True,
        "enable_ssh": True,  # Raspberry Pi's cloud-init module: turn sshd on
        "runcmd": [["systemctl", "enable", "--now", "ssh"]],
    }
    instance = hashlib.sha256(f"{hostname}\n{ssh_key}".encode()).hexdigest()[:16]
    return {
        "user-data": "#cloud-config\n" + json.dumps(user_data, indent=2) + "\n",
        "meta-data": json.dumps({"instance-id": f"typewriter-{instance}",
                                 "local-hostname": hostname}, indent=2) + "\n",
        # Wired Ethernet if plugged in, nothing else: Wi-Fi stays unconfigured.
        "network-config": json.dumps({"network": {"version": 2, "ethernets": {"eth0": {
            "dhcp4": True, "optional": True}}}}, indent=2) + "\n",
    }


def custom_toml(hostname: str, user: str, ssh_key: str) -> str:
    # init_config sets a password for the user; one nobody knows, and SSH refuses
    # passwords, so the key is the only way in.
    hashed = run(["openssl", "passwd", "-6", "-stdin"], input=secrets.token_urlsafe(32),
                 what="hashing the admin user's unusable password").strip()
    return "\n".join([
        "# First-boot settings read by raspberrypi-sys-mods (init_config); written by",
        "# `typewriter image build`.",
        "config_version = 1",
        "",
        "[system]",
        f"hostname = {json.dumps(hostname)}",
        "",
        "[user]",
        f"name = {json.dumps(user)}",
        f"password = {json.dumps(hashed)}",
        "password_encrypted = true",
        "",
        "[ssh]",
        "enabled = true",
        "password_authentication = false",
        f"authorized_keys = [ {json.dumps(ssh_key)} ]",
        "",
    ])
