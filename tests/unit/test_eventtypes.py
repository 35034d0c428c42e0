"""The event-type table is the one place that says what a type means: everything else derives
from it, so adding a type is one line (proved by adding one to a copy of the code)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stream.core import eventtypes as et
from stream.core.bandit import BanditParams
from stream.core.events import EVENT_TYPES, Limits, Reject, decode_event
from stream.core.profile import ProfileParams
from stream.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_come_from_the_table() -> None:
    assert EVENT_TYPES == tuple(t.name for t in et.TABLE)
    assert Settings().event_weight_map() == ProfileParams().weights == {
        t.name: t.weight for t in et.TABLE if t.weight}
    assert Settings().reward_weight_map() == BanditParams().reward_weights == {
        t.name: t.reward for t in et.TABLE if t.reward is not None}
    assert BanditParams().impression_types == tuple(t.name for t in et.TABLE if t.impression)
    # today's table, as the README documents it
    assert Settings().event_weights == "view=1,click=2,add_to_cart=4,purchase=8,search=1.5"
    assert Settings().reward_weights == "click=1,add_to_cart=0,purchase=0"
    assert et.CONVERSION_TYPES == {"purchase"} and et.ERASING_TYPES == {"forget"}
    assert et.QUERY_TYPES == {"search"} and et.ITEMLESS_TYPES == {"search", "forget"}


def test_the_schema_follows_the_table() -> None:
    ok = b'{"event_id": "e", "user_id": "u", "type": "%s", "ts": 1%s}'
    assert isinstance(decode_event(ok % (b"forget", b""), None, Limits()), type(
        decode_event(ok % (b"view", b', "item_id": "i"'), None, Limits())))
    miss = decode_event(ok % (b"search", b""), None, Limits())
    assert isinstance(miss, Reject) and miss.reason == "missing_field"
    miss = decode_event(ok % (b"purchase", b""), None, Limits())
    assert isinstance(miss, Reject) and "item_id" in miss.detail


_SCRIPT = """
import asyncio
from encoder.fake import HashingEncoder
from stream.core.events import Event, Limits, decode_event
from stream.settings import Settings
from stream.worker.testing import InProcessWorker

assert isinstance(decode_event(b'{"event_id": "e", "user_id": "u", "type": "wishlist",'
                               b' "ts": 1, "item_id": "i"}', None, Limits()), Event)
s = Settings.from_env({}, state_dir="state")
assert "wishlist=3" in s.event_weights and "wishlist=0.5" in s.reward_weights

async def main():
    async with InProcessWorker(s, HashingEncoder(8)) as w:
        await w.items([{"item_id": "i1", "title": "a tent"}])
        await w.events([{"event_id": "e1", "user_id": "u1", "type": "wishlist", "ts": 1,
                         "item_id": "i1"}])
        st = w.pipeline.profiles.owner("u1")
        assert st is not None and st.outcomes[("wishlist", "applied")] == 1
        assert st.arms.counts("i1") == (0.0, 0.5)
        assert st.users.get("u1")["events"] == 1

asyncio.run(main())
print("ok")
"""


def test_adding_an_event_type_is_one_line(tmp_path: Path) -> None:
    """One line in the table of a copy of the code: validated, weighted in profiles, rewarded
    in the bandit, counted in the outcomes."""
    for pkg in ("stream", "encoder", "index"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    table = tmp_path / "stream" / "core" / "eventtypes.py"
    text = table.read_text()
    anchor = '    EventType("forget", item=False, erases=True),\n'
    assert anchor in text
    table.write_text(text.replace(
        anchor, anchor + '    EventType("wishlist", weight=3.0, reward=0.5),\n'))
    out = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(tmp_path),
                                                      "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
