"""The system packages some tests drive for real (Debian names): how to tell each one is there, and how to install the
missing ones. A test that needs one is marked `@pytest.mark.needs("chromium")`; tests/conftest.py skips it where the
package is missing and ends the run with one line naming the skipped tests and the command that installs what they need.

`make test` runs this file first (standard library only: any python3 runs it). As root with apt-get it installs what
is missing; elsewhere it does nothing and those tests skip.

    python3 tests/syspackages.py            # prints the missing packages, one a line
    python3 tests/syspackages.py --install  # installs them where it can
"""

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium, driven by Playwright (never a browser Playwright downloads)


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian's postgresql package), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


PACKAGES = {
    "chromium": lambda: os.access(CHROMIUM, os.X_OK),
    "postgresql": lambda: postgres_bin() is not None,
}


def missing() -> list[str]:
    return [name for name, present in PACKAGES.items() if not present()]


def can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def install_command(names: list[str]) -> str:
    sudo = "" if os.geteuid() == 0 else "sudo "
    return f"{sudo}apt-get install -y --no-install-recommends {' '.join(names)}"


def install(names: list[str]) -> None:
    """apt-get, quiet but for its errors. A failure is reported, not raised: the rest of the suite still runs, and the
    tests that need these packages skip and say so."""
    print(f"installing the system packages the tests need: {' '.join(names)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *names],
    ):
        if subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            print(f"`{' '.join(command)}` failed: the tests that need {', '.join(names)} will skip", file=sys.stderr)
            return


if __name__ == "__main__":
    names = missing()
    if "--install" not in sys.argv[1:]:
        for name in names:
            print(name)
    elif names and can_install():
        install(names)
