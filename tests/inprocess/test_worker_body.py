"""A worker's own HTTP API bounds request bodies with ``PROFILES_HTTP_MAX_BODY_BYTES`` (4 MiB,
the front's bound too): a body up to it is read (aiohttp's default bound was 1 MiB, so a body
the front forwarded could get the child's plain-text 413), a larger one gets 413 with a one-line
JSON error naming the setting and counts in ``profiles_http_bodies_rejected_total``."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import orjson
import pytest

from encoder.fake import HashingEncoder
from stream.core.errors import ConfigError
from stream.serve.queries import Queries
from stream.settings import Settings
from stream.worker.testing import InProcessWorker

pytestmark = [pytest.mark.timeout(120)]

DIM = 16


def _arms_body(size: int) -> bytes:
    """A valid /internal/arms body of about ``size`` bytes (10,000 long arm names)."""
    name = "a" * (size // 10_000)
    return orjson.dumps({"arms": [f"{name}{i}" for i in range(10_000)]})


async def _post(tmp_path: Path, bodies: list[bytes], **kw: int) -> list[tuple[int, str, float]]:
    from aiohttp.test_utils import TestClient, TestServer

    from stream.serve.http import Api

    s = Settings.from_env({}, state_dir=str(tmp_path / "state"), **kw)
    out = []
    async with InProcessWorker(s, HashingEncoder(DIM)) as w:
        async with TestClient(TestServer(Api(Queries(w.pipeline)).app())) as c:
            for body in bodies:
                r = await c.post("/internal/arms", data=io.BytesIO(body),
                                 headers={"Content-Type": "application/json"})
                text = await r.text()
                counter = getattr(w.pipeline.metrics, "http_bodies_rejected", None)
                out.append((r.status, text, -1 if counter is None else counter._value.get()))
    return out


def test_a_2_mib_body_is_read_and_a_larger_one_gets_a_json_413(tmp_path) -> None:
    two_mib = _arms_body(2 << 20)
    assert (2 << 20) <= len(two_mib) < (4 << 20)
    over = _arms_body(5 << 20)
    (ok_status, ok_text, n0), (status, text, n1) = asyncio.run(
        _post(tmp_path, [two_mib, over]))
    assert ok_status == 200, ok_text[:200]  # aiohttp's default 1 MiB bound refused it before
    assert set(orjson.loads(ok_text)) == {"arms", "impressions", "rewards"} and n0 == 0
    assert status == 413
    assert orjson.loads(text) == {
        "error": f"request body over {4 << 20} bytes (PROFILES_HTTP_MAX_BODY_BYTES)"}
    assert n1 == 1


def test_the_bound_is_the_setting(tmp_path) -> None:
    small = _arms_body(20_000)
    ((status, text, n),) = asyncio.run(_post(tmp_path, [small], http_max_body_bytes=10_000))
    assert status == 413 and "over 10000 bytes (PROFILES_HTTP_MAX_BODY_BYTES)" in text
    assert n == 1


def test_the_bound_is_validated_in_one_line() -> None:
    assert Settings.from_env({}).http_max_body_bytes == 4 << 20
    for raw in ("0", str((1 << 30) + 1)):
        with pytest.raises(ConfigError) as exc:
            Settings.from_env({"PROFILES_HTTP_MAX_BODY_BYTES": raw})
        assert str(exc.value) == \
            f"http_max_body_bytes must be in 1..1073741824 (1 GiB), got {int(raw)}"
