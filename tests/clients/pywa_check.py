"""pywa, a real Cloud API client from PyPI, against ferry's Cloud route.

Starts `ferry serve` (in-process chat server, ports 0, a temporary data dir, auth on), logs in as
the admin (`POST /v1/users/login`, HTTP Basic) and hands the bearer token to pywa, points pywa at
`http://ADDR/v21.0` and sends a text, a template and an interactive (reply buttons) message; each
must come back with a message id (and the template with message_status "accepted"). Run by
tests/clients/pywa_check.sh, which makes the venv.

pywa has no base-url option: its GraphAPI sets the httpx session's base_url to the Graph API host
in __init__. We hand it our own httpx.Client and point that session at ferry afterwards.
"""

import subprocess
import sys
import tempfile

import httpx
from pywa import WhatsApp, types
from pywa.types.templates import TemplateLanguage

API_VERSION = "21.0"
PHONE_ID = "106540352242922"  # a Graph API phone-number id: ferry sends from its default sender
TO = "+16315551234"
ADMIN_PASSWORD = "pywa-check-admin-password"


def start_ferry(binary: str, data_dir: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [binary, "serve", "--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0",
         "--shards", "2", "--data-dir", data_dir],
        stdout=subprocess.PIPE, text=True,
        env={"RUST_LOG": "warn", "PATH": "/usr/bin:/bin", "FERRY_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )
    for line in proc.stdout:
        if line.startswith("ferry: http listening on "):
            return proc, line.split()[-1]
    raise SystemExit(f"ferry serve exited before listening (status {proc.wait()})")


def main() -> None:
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as data_dir:
        proc, addr = start_ferry(binary, data_dir)
        try:
            login = httpx.post(f"http://{addr}/v1/users/login", auth=("admin", ADMIN_PASSWORD), timeout=10)
            assert login.status_code == 200, f"login: {login.status_code} {login.text}"
            token = login.json()["users"][0]["token"]
            session = httpx.Client(timeout=10)
            wa = WhatsApp(phone_id=PHONE_ID, token=token, session=session, api_version=API_VERSION)
            session.base_url = f"http://{addr}/v{API_VERSION}"

            text = wa.send_message(to=TO, text="hello from pywa")
            template = wa.send_template(to=TO, name="hello_world", language=TemplateLanguage.ENGLISH_US)
            interactive = wa.send_message(
                to=TO,
                text="Pick one",
                header="ferry",
                footer="via pywa",
                buttons=[types.Button(title="Yes", callback_data="yes"), types.Button(title="No", callback_data="no")],
            )
            ids = [text.id, template.id, interactive.id]
            assert all(ids), f"missing ids: {ids}"
            assert len(set(ids)) == 3, f"ids not distinct: {ids}"
            assert str(template.status) == "accepted", f"template status: {template.status!r}"
            print(f"pywa: text {text.id}, template {template.id} ({template.status}), interactive {interactive.id}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
