"""The README's example application for the SDK guards, run as written: against `margins enforce` on a
real mosquitto, with the OpenAI SDK pointed at a local stand-in of the OpenAI API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.budget.broker import REPO
from tests.budget.client_helpers import stored_usage
from tests.budget.enforcer_process import EnforcerProcess
from tests.budget.llm_stand_in import Script, llm_stand_in

pytest.importorskip("openai")

SECTION = "### Guarding SDK calls: `budget.integrations`"
# $0.01 a month, blocked at the cap: one answer of gpt-4o (3,000 prompt and 40 output tokens, $0.0079)
# fits; the next one's worst case (300 output tokens alone are $0.003) no longer does.
CAPS = 'default_cap_usd = "0.01"\nat_cap = "block"\nreservation_ttl_s = 600\n'


def readme_example() -> str:
    """The first python block of the README's section on the SDK guards."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION) :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, f"no python block after {SECTION!r} in README.md"
    return found.group(1)


def test_the_readme_example_answers_until_the_user_is_past_the_cap(
    enforcer_process: EnforcerProcess, tmp_path: Path
) -> None:
    example = tmp_path / "ask.py"
    example.write_text(readme_example())
    enforcer_process.config.write_text(CAPS)
    enforcer_process.start()
    with llm_stand_in() as stand_in:
        stand_in.script = Script(prompt_tokens=3000, completion_tokens=40)
        env = os.environ | {
            "MARGINS_BROKER": enforcer_process.broker.url,
            "OPENAI_BASE_URL": stand_in.openai_url,
            "OPENAI_API_KEY": "sk-test",
        }

        def ask(question: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, str(example), "alice", question],
                env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
            )  # fmt: skip

        first = ask("Where is my order?")
        assert first.returncode == 0, first.stderr
        assert first.stdout == "Your order ships today.\n"
        second = ask("And my refund?")
        assert second.returncode == 1, second.stdout + second.stderr
        assert second.stdout == ""
        assert re.fullmatch(
            r"no answer: budget denied 'gpt-4o' for user 'alice' \(\$0\.00\d+ left\): .+\n", second.stderr
        )
        assert len(stand_in.seen) == 1  # the denied question never reached the provider
    assert enforcer_process.terminate() == 0
    (usage,) = stored_usage(enforcer_process.store)
    assert (usage.user_id, usage.model, usage.feature) == ("alice", "gpt-4o", "cli")
    assert (usage.input_tokens, usage.output_tokens) == (3000, 40)
