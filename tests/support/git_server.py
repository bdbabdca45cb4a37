"""A real git server for tests: git's own smart-HTTP backend (``git http-backend``, as CGI) on
the host, over plain HTTP or HTTPS (a certificate of a CA made for the test), optionally
requiring a token as HTTP Basic authentication. Clones, fetches and pushes from inside worker
containers reach it through the egress proxy like any remote.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HTTP_BACKEND = "git-http-backend"


def git(*args: str, cwd: Path | None = None) -> str:
    """Run host git (a fixed identity, no user config); its stdout."""
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout


def backend_path() -> str:
    exec_path = git("--exec-path").strip()
    return str(Path(exec_path) / HTTP_BACKEND)


@dataclass
class LocalCA:
    """A CA of the test's own and one server certificate it signed, as PEM files."""

    directory: Path
    host: str
    ca_pem: Path = field(init=False)
    cert_pem: Path = field(init=False)
    key_pem: Path = field(init=False)

    def __post_init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "worker-manager test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(self.host))
        except ValueError:
            alt = x509.DNSName(self.host)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.host)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_pem = self.directory / "ca.pem"
        self.cert_pem = self.directory / "server.pem"
        self.key_pem = self.directory / "server.key"
        self.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_pem, self.key_pem)
        return context


class GitServer:
    """Serves every bare repository under ``root`` at ``/<name>.git``; pushes enabled."""

    def __init__(
        self,
        root: Path,
        *,
        host: str,
        token: str | None = None,
        ca: LocalCA | None = None,
    ) -> None:
        self.root = root
        self.host = host
        self.token = token
        self.ca = ca
        self.port = 0
        #: (method, path, the Authorization header or "") of every request, in order.
        self.requests: list[tuple[str, str, str]] = []
        #: The bytes of each answer, in the same order.
        self.answered: list[int] = []
        self._runner: web.AppRunner | None = None
        self._backend = backend_path()

    @property
    def scheme(self) -> str:
        return "https" if self.ca is not None else "http"

    def url(self, name: str) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/{name}.git"

    def create(self, name: str, files: dict[str, str], tag: str | None = None) -> str:
        """A bare repository ``name`` with one commit of ``files`` on ``main``; its commit."""
        work = self.root / f".{name}-work"
        git("init", "-q", "-b", "main", str(work))
        for relative, text in files.items():
            path = work / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "first", cwd=work)
        if tag is not None:
            git("tag", tag, cwd=work)
        bare = self.root / f"{name}.git"
        git("clone", "-q", "--bare", str(work), str(bare))
        git("config", "http.receivepack", "true", cwd=bare)
        shutil.rmtree(work)
        return git("rev-parse", "HEAD", cwd=bare).strip()

    def head(self, name: str, ref: str = "main") -> str:
        return git("rev-parse", ref, cwd=self.root / f"{name}.git").strip()

    async def start(self) -> GitServer:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            "0.0.0.0",
            0,
            ssl_context=self.ca.server_context() if self.ca is not None else None,
        )
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization", "")
        self.requests.append((request.method, request.path, authorization))
        if self.token is not None and not _carries(authorization, self.token):
            self.answered.append(0)
            return web.Response(
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="test"'},
                text="a token is required\n",
            )
        body = await request.read()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "test",
            "REMOTE_ADDR": request.remote or "",
            "GIT_CONFIG_GLOBAL": "/dev/null",
        }
        if request.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = request.headers["Content-Encoding"]
        if request.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = request.headers["Git-Protocol"]
        process = await asyncio.create_subprocess_exec(
            self._backend,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _err = await process.communicate(body)
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        self.answered.append(len(payload))
        return web.Response(status=status, headers=headers, body=payload)


def _carries(authorization: str, token: str) -> bool:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        _user, _, password = base64.b64decode(value).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    return password == token
