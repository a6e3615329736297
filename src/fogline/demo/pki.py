"""Throwaway credentials for ``fogline demo --tls``: one CA, certificates and tokens made for the run.

Everything lives in a temporary folder that is removed when the demo ends:

- a CA (``ca.pem``) that signs every certificate below and that every party trusts;
- the cloud's server certificate (``cloud.pem``, for 127.0.0.1) and its tokens file listing the
  agent (``cloud-tokens``); the agent's client certificate (``agent.pem``) and token (``agent-token``);
- the agent listener's server certificate (``listener.pem``) and tokens file listing the demo client
  (``agent-tokens``); the client's certificate (``client.pem``) and token.

So both hops run mutual TLS with a bearer token, exactly as ``docs/security.md`` sets them up.
Certificates come from ``trustme`` (in the ``dev`` extra, which ``make demo`` installs).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fogline.errors import ConfigError
from fogline.security import add_token

DEVICE = "demo-device"
CLIENT = "demo-client"


class DemoCredentials:
    """The files and tokens of one demo run (see the module docstring); ``close()`` removes them."""

    def __init__(self) -> None:
        try:
            import trustme
        except ImportError:
            raise ConfigError("fogline demo --tls makes its certificates with trustme: "
                              "pip install trustme (it is in the dev extra)") from None
        self.folder = Path(tempfile.mkdtemp(prefix="fogline-demo-tls-"))
        ca = trustme.CA(organization_name="fogline demo")
        self.ca = self._write("ca.pem", ca.cert_pem)
        self.cloud = self._write("cloud.pem", ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem)
        self.agent = self._write("agent.pem", ca.issue_cert(DEVICE).private_key_and_cert_chain_pem)
        self.listener = self._write("listener.pem",
                                    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem)
        self.client = self._write("client.pem", ca.issue_cert(CLIENT).private_key_and_cert_chain_pem)
        self.cloud_tokens = self.folder / "cloud-tokens"
        self.agent_token = self.folder / "agent-token"
        self.agent_token.write_text(add_token(self.cloud_tokens, DEVICE) + "\n")
        self.agent_token.chmod(0o600)
        self.listener_tokens = self.folder / "agent-tokens"
        self.client_token = add_token(self.listener_tokens, CLIENT)

    def _write(self, name: str, blob: object) -> Path:
        path = self.folder / name
        blob.write_to_path(str(path))  # type: ignore[attr-defined]
        return path

    def cloud_args(self) -> list[str]:
        """``fogline cloud serve`` flags: mutual TLS and the tokens file."""
        return ["--tls-cert", str(self.cloud), "--tls-key", str(self.cloud), "--tls-client-ca", str(self.ca),
                "--tokens-file", str(self.cloud_tokens)]

    def agent_yaml(self) -> str:
        """The ``defaults`` lines of the agent's fleet config: its cloud link and its own listener."""
        return "\n".join([
            "  cloud:",
            f"    tls: {{ca_file: '{self.ca}', cert_file: '{self.agent}', key_file: '{self.agent}'}}",
            f"    credentials: {{token_file: '{self.agent_token}'}}",
            "  serving:",
            f"    tls: {{cert_file: '{self.listener}', key_file: '{self.listener}', client_ca_file: '{self.ca}'}}",
            f"    auth: {{tokens_file: '{self.listener_tokens}'}}",
        ])

    def client_credentials(self) -> object:
        """gRPC channel credentials of the demo client (trusts the CA, presents its certificate)."""
        import grpc

        pem = self.client.read_bytes()
        return grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes(), private_key=pem,
                                            certificate_chain=pem)

    def client_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.client_token}"),)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
