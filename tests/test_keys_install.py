"""`chartdrop keys new`, and the README's install step 4 run as written: the key
installed under the credential's name is what `check --online` and the unit read."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jwt
from conftest import CLIENT_ID, Sandbox, write_config

from daemon.keys import public_pem

ROOT = Path(__file__).resolve().parent.parent
CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHARTDROP, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_keys_new_writes_a_private_key_and_prints_a_matching_jwks(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    key = tmp_path / "new-key.pem"
    result = run("keys", "new", "--out", str(key), "--kid", "clinic-2026", "--jwks-only")
    assert result.returncode == 0, result.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    (jwk,) = json.loads(result.stdout)["keys"]
    assert (jwk["kid"], jwk["alg"], jwk["kty"]) == ("clinic-2026", "RS384", "RSA")
    # the JWK is the public half of the file written: a token signed with one verifies
    token = jwt.encode({"iss": "x"}, key.read_bytes(), algorithm="RS384")
    public = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk))
    assert jwt.decode(token, public, algorithms=["RS384"]) == {"iss": "x"}  # type: ignore[arg-type]
    again = run("keys", "new", "--out", str(key))
    assert again.returncode == 2 and "never overwrites" in again.stderr
    # and Redox (the sandbox) accepts it once the public half is registered
    sandbox.state.register_client(CLIENT_ID, "clinic-2026", public_pem(key))
    config = write_config(
        tmp_path, sandbox, redox={"private_key_file": str(key), "key_id": "clinic-2026"}
    )
    online = run("check", "-c", str(config), "--online")
    assert online.returncode == 0, online.stderr
    assert "authenticated with Redox" in online.stdout


def _step4() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("    # 4. the config and the key")
    return readme[start : readme.index("    # 5. the service", start)]


def test_readme_install_step_4_as_written(tmp_path: Path, sandbox: Sandbox) -> None:
    step = _step4()
    unit = (ROOT / "systemd" / "chartdrop.service").read_text()
    (credential,) = re.findall(r"^LoadCredential=([^:]+):(\S+)$", unit, re.MULTILINE)
    name, source = credential
    # the key is installed where the unit loads it from, under the credential's name
    installs = [shlex.split(line) for line in step.splitlines() if "install -m 0600" in line]
    (install,) = installs
    assert install[-1] == source and Path(source).name == name
    assert f'private_key_file = "{name}"' in step
    # run the check exactly as step 4 does, with /etc/chartdrop/credentials in tmp
    creds = tmp_path / "etc-chartdrop-credentials"
    creds.mkdir(mode=0o700)
    installed = creds / Path(source).name
    installed.write_bytes(sandbox.private_key.read_bytes())
    installed.chmod(0o600)
    config = write_config(tmp_path, sandbox, redox={"private_key_file": name})
    check_line = next(line for line in step.splitlines() if "chartdrop check" in line)
    args = shlex.split(check_line)[1:]  # after the interpreter path
    assert args[:1] == ["check"] and "--online" in args
    assert "CREDENTIALS_DIRECTORY=/etc/chartdrop/credentials" in step
    result = run("check", "-c", str(config), "--online", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert result.returncode == 0, result.stderr
    assert "authenticated with Redox" in result.stdout
