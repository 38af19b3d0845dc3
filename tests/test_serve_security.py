"""Secure by default, without starting Serve: the endpoint refuses to start open on a reachable host, keys
come from config, file and environment (the file rotates, and fails closed), errors and logs hold no key
material, and the wire format maps forewarn's finish reasons for strict OpenAI clients."""

from __future__ import annotations

import logging

import pytest
from forewarn.config import build_config
from forewarn.errors import ConfigError
from forewarn.serve import ServeConfig
from forewarn.serve.auth import KeyStore, check_exposure, is_loopback
from forewarn.serve.config import Auth
from forewarn.serve.openai_schema import ApiError
from forewarn.serve.wire import wire_finish


def _cfg(host: str, **auth: object) -> ServeConfig:
    return build_config(
        ServeConfig,
        {
            "generator": {"model": {"path": "/nonexistent/model"}},
            "http": {"host": host},
            "auth": {"api_keys_env": None} | auth,
        },
    )


def test_no_keys_on_a_reachable_host_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from forewarn.serve.serving import app_from_config

    with pytest.raises(ConfigError, match=r"http.host='0.0.0.0'.*allow_unauthenticated"):
        app_from_config(_cfg("0.0.0.0"))
    with pytest.raises(ConfigError, match="no API key"):
        app_from_config(_cfg("10.1.2.3"))
    # loopback stays open for development; keys or an explicit opt-out allow a reachable host
    for host in ("127.0.0.1", "localhost", "::1"):
        assert is_loopback(host)
    assert app_from_config(_cfg("0.0.0.0", api_keys=["sk-x"])) is not None
    monkeypatch.setenv("FW_TEST_KEYS", "sk-env")
    assert app_from_config(_cfg("0.0.0.0", api_keys_env="FW_TEST_KEYS")) is not None


def test_allow_unauthenticated_starts_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        check_exposure(Auth(api_keys_env=None, allow_unauthenticated=True), "0.0.0.0", has_keys=False)
    assert "WITHOUT authentication" in caplog.text


def test_cli_refuses_an_open_reachable_endpoint() -> None:
    from forewarn.cli import app
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--set", "auth.api_keys_env=null"])
    assert r.exit_code == 2 and "allow_unauthenticated" in r.output and "Traceback" not in r.output


def test_key_file_rotates_and_fails_closed(tmp_path) -> None:
    f = tmp_path / "keys"
    f.write_text("# comment\nsk-one\n")
    store = KeyStore(Auth(api_keys_env=None, api_keys_file=str(f)))
    store.check("Bearer sk-one")
    f.write_text("sk-two\n\n")
    store.check("Bearer sk-two")
    with pytest.raises(ApiError) as info:
        store.check("Bearer sk-one")
    assert info.value.status == 401 and "sk-one" not in info.value.message
    f.unlink()  # the secret vanished: every request is refused, the endpoint never opens
    with pytest.raises(ApiError):
        store.check("Bearer sk-two")
    with pytest.raises(ConfigError, match="auth.api_keys_file"):
        KeyStore(Auth(api_keys_env=None, api_keys_file=str(tmp_path / "missing")))


def test_config_keys_never_appear_in_dumps_or_errors() -> None:
    cfg = _cfg("127.0.0.1", api_keys=["sk-secret-123"])
    assert "sk-secret-123" not in cfg.model_dump_json() and "sk-secret-123" not in repr(cfg)
    store = KeyStore(cfg.auth)
    for header in ("Bearer nope", "Basic sk-secret-123", ""):
        with pytest.raises(ApiError) as info:
            store.check(header)
        assert "sk-secret-123" not in str(info.value.body())


def test_compat_maps_recurrence_into_openais_enum() -> None:
    assert wire_finish("recurrence", "forewarn") == "recurrence"
    assert wire_finish("recurrence", "openai") == "length"
    for reason in ("stop", "length", "content_filter"):
        assert wire_finish(reason, "openai") == reason


def test_vllm_generator_with_decoding_mitigations_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"generator.decoding=\[no_repeat_ngram\].*backend='hf'"):
        build_config(
            ServeConfig,
            {
                "generator": {
                    "model": {"path": "m", "backend": "vllm"},
                    "decoding": [{"kind": "no_repeat_ngram"}],
                }
            },
        )


def test_framework_errors_are_openai_shaped() -> None:
    """FastAPI's own 404 / 405 / 422 and an unhandled 500 go through the app's handlers (the Serve tests
    check 404 / 405 over HTTP; 422 and 500 need a route the app does not have)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.testclient import TestClient
    from forewarn.serve.serving import _http_error, _server_error, _validation_error
    from starlette.exceptions import HTTPException

    app = FastAPI()
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _server_error)

    @app.get("/typed/{n}")
    def typed(n: int) -> dict:
        return {"n": n}

    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("kaboom sk-secret")

    client = TestClient(app, raise_server_exceptions=False)
    for path, method, status in (("/typed/x", "GET", 422), ("/nowhere", "GET", 404), ("/typed/1", "POST", 405),
                                 ("/boom", "GET", 500)):  # fmt: skip
        r = client.request(method, path)
        err = r.json()["error"]
        assert r.status_code == status and set(err) == {"message", "type", "param", "code"}, r.text
        assert "sk-secret" not in r.text
    assert client.get("/typed/x").json()["error"]["param"] == "path.n"
