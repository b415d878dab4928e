"""The first-boot installer placed in the image: a oneshot unit and its script.

The application, its wheels and the Debian packages it uses (espeak-ng, alsa-utils
and what the base lacks of theirs) travel in the image; on first boot the script
checks the packages' SHA-256 sums and installs them with dpkg, then makes
/opt/typewriter/venv and installs into it with `pip --no-index` from the
wheels alone (pip itself runs from its wheel, so the base image needs neither
pip nor python3-venv), hands the state folder to the appliance's user and
authorizes the persona upload key. `typewriter.service` is enabled in the image
and ordered after this unit, so it starts on the same first boot.
"""

from __future__ import annotations

UNIT = "typewriter-firstboot.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
UNIT_LINK = f"/etc/systemd/system/multi-user.target.wants/{UNIT}"
SCRIPT_PATH = "/usr/local/sbin/typewriter-firstboot"
WHEELS = "/opt/typewriter/wheels"
DEBS = "/opt/typewriter/debs"  # espeak-ng, alsa-utils and what they need, with SHA256SUMS
VENV = "/opt/typewriter/venv"
PERSONA_KEY = "/etc/typewriter/persona-upload.pub"

UNIT_TEXT = f"""\
# Installs the typewriter appliance from the wheels in the image, offline, once.
[Unit]
Description=Install the typewriter appliance (first boot, offline)
After=local-fs.target systemd-sysusers.service systemd-tmpfiles-setup.service
Before=typewriter.service
ConditionPathExists=!{VENV}/bin/typewriter

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={SCRIPT_PATH}
TimeoutStartSec=30min
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

SCRIPT_TEXT = f"""\
#!/bin/sh
# First boot: install the appliance into {VENV} from {WHEELS}, without a network.
# ROOT (default /) lets a test run this against a tree that is not the running system.
set -eu
ROOT="${{ROOT:-}}"
WHEELS="$ROOT{WHEELS}"
DEBS="$ROOT{DEBS}"
VENV="{VENV}"
PY="${{PYTHON:-python3}}"

pip_wheel=
for wheel in "$WHEELS"/pip-*.whl; do [ -f "$wheel" ] && pip_wheel="$wheel"; done
if [ -z "$pip_wheel" ]; then
    echo "typewriter-firstboot: no pip wheel in $WHEELS: rebuild the image with a wheelhouse" >&2
    exit 1
fi
# The system packages the appliance uses (speech), checked against the sums the builder
# took from the Debian archive's index, installed with dpkg: no network either.
if [ -z "$ROOT" ] && [ -s "$DEBS/SHA256SUMS" ]; then
    (cd "$DEBS" && sha256sum --quiet -c SHA256SUMS)
    DEBIAN_FRONTEND=noninteractive dpkg --force-confold --skip-same-version -i "$DEBS"/*.deb
    command -v ldconfig >/dev/null 2>&1 && ldconfig || true
fi
# An interrupted install left a half venv: start again (scripts record its path, so it
# is built where it stays).
rm -rf "$ROOT$VENV"
"$PY" -m venv --without-pip "$ROOT$VENV"
# Every wheel the image carries: the appliance, its dependencies and the Pi's (gpiozero,
# lgpio); the builder put exactly those there.
"$ROOT$VENV/bin/python" "$pip_wheel/pip" install --no-index --no-cache-dir \\
    --disable-pip-version-check --find-links "$WHEELS" "$WHEELS"/*.whl

if [ -z "$ROOT" ] && getent passwd typewriter >/dev/null 2>&1; then
    if [ -s "{PERSONA_KEY}" ]; then
        PATH="$VENV/bin:$PATH" typewriter persona authorize-key "{PERSONA_KEY}" \\
            --authorized-keys /var/lib/typewriter/.ssh/authorized_keys \\
            --config /etc/typewriter/config.toml
    fi
    # The state folder (personas, the upload key) belongs to the appliance's user.
    chown -R typewriter:typewriter /var/lib/typewriter
fi
echo "typewriter: installed $("$ROOT$VENV/bin/typewriter" --version)"
"""
