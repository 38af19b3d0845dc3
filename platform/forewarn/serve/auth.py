"""Bearer API keys of the guarded endpoint, and the refusal to serve an open endpoint by accident.

Keys come from three places, merged: ``auth.api_keys`` in the config, ``auth.api_keys_file`` (one key a
line; re-read whenever the file changes, so keys rotate without a redeploy) and the environment variable
``auth.api_keys_env``. The app passes that variable from the process that builds it to every ingress
replica through Serve's ``runtime_env`` (:func:`key_env_vars`), so a key exported where ``forewarn
serve`` or ``serve run`` starts reaches replicas on every node.

Once any source is configured the endpoint fails closed: a key file that empties or disappears rejects
every request rather than opening the endpoint. With no source at all the endpoint is open, which
:func:`check_exposure` allows only on a loopback host or with ``auth.allow_unauthenticated: true``.
Key material never appears in errors, logs or metrics: errors say which source, never what it held.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from pathlib import Path

from forewarn.errors import ConfigError
from forewarn.serve.config import Auth
from forewarn.serve.openai_schema import ApiError

logger = logging.getLogger("ray.serve")


def is_loopback(host: str) -> bool:
    """Whether ``host`` accepts connections from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def key_env_vars(auth: Auth) -> dict[str, str]:
    """The key variable of this process's environment, to hand to every replica's ``runtime_env``."""
    name = auth.api_keys_env
    return {name: os.environ[name]} if name and os.environ.get(name) else {}


class KeyStore:
    """The accepted keys, re-read from the key file when its modification time changes."""

    def __init__(self, auth: Auth):
        self.auth = auth
        self._static = [k.get_secret_value() for k in auth.api_keys if k.get_secret_value()]
        env = os.environ.get(auth.api_keys_env, "") if auth.api_keys_env else ""
        self._env = [k.strip() for k in env.split(",") if k.strip()]
        self._file_keys: list[str] = []
        self._stamp: tuple[float, int] | None = None
        if auth.api_keys_file is not None:
            if not Path(auth.api_keys_file).is_file():
                raise ConfigError(
                    f"auth.api_keys_file={auth.api_keys_file!r}: no such file on this node; create it (one key "
                    "per line) or mount the secret there"
                )
            self._reload()

    @property
    def required(self) -> bool:
        """Whether any key source is configured (then the endpoint never opens, even with zero keys)."""
        return bool(self._static or self._env or self.auth.api_keys_file)

    def _reload(self) -> None:
        path = Path(self.auth.api_keys_file or "")
        try:
            st = path.stat()
        except OSError:
            self._file_keys, self._stamp = [], None  # removed: fail closed
            return
        stamp = (st.st_mtime, st.st_size)
        if stamp == self._stamp:
            return
        lines = path.read_text().splitlines()
        self._file_keys = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        self._stamp = stamp

    def keys(self) -> list[str]:
        if self.auth.api_keys_file is not None:
            self._reload()
        return self._static + self._env + self._file_keys

    def check(self, authorization: str) -> None:
        """Raise a 401 unless ``authorization`` is ``Bearer <an accepted key>`` (constant-time compare)."""
        if not self.required:
            return
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401, "Missing bearer API key: send 'Authorization: Bearer <key>'.", None, "invalid_api_key"
            )
        given = token.strip().encode()
        if not any(hmac.compare_digest(given, k.encode()) for k in self.keys()):
            raise ApiError(401, "Incorrect API key provided.", None, "invalid_api_key")


def check_exposure(auth: Auth, host: str, has_keys: bool) -> None:
    """Refuse an unauthenticated endpoint on a non-loopback host unless the config allows it (then warn)."""
    if has_keys or is_loopback(host):
        return
    if not auth.allow_unauthenticated:
        raise ConfigError(
            f"http.host={host!r} is reachable from other machines and no API key is configured: set "
            "auth.api_keys, auth.api_keys_file or the auth.api_keys_env variable "
            f"({auth.api_keys_env or 'unset'}), or set auth.allow_unauthenticated: true to serve openly"
        )
    logger.warning(
        "forewarn: serving WITHOUT authentication on %s (auth.allow_unauthenticated: true); anyone who can "
        "reach this host can use the model",
        host,
    )
