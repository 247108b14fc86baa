"""What tests in several rooms share, imported by name (`from support import run`): pytest puts tests/ on sys.path
for its conftest.py. The CLI in-process with its one-line-error check, the one writer of study files (the
`study_file` fixture is this writer aimed at the test's own folder), child processes that cannot outlive their
test, and the repository's root."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml
from click.testing import CliRunner

from deepfm_tuner.tuner.cli import main

ROOT = Path(__file__).resolve().parents[1]  # the repository: studies/, data/, docker-compose.yml

POLICY = """policy_configs:
  scoring_policy:
    policy_type: deepfm
    embedding_dim: 4
    deep_hidden_units: [16]
    activation_fn: "relu"
    dropout: 0.0
    learning_rate: 0.01
training:
  batch_size: 256
  max_epochs: 2
  device: cpu
  threads: 1
"""


def run(*args):
    """`deepfm ARGS...` in this process; exceptions other than click's propagate."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *fragments):
    """Exit 2 and one line 'Error: ...' holding every fragment, no traceback: how bad input must end."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


# The tiny tuning study (3,000 synthetic rows, 3 epochs, a small space, a median pruner) that end-to-end tests
# run, whole or with a few keys changed; its experiment is deepfm-tiny.
TINY_STUDY = {
    "study": {"name": "tiny", "n_trials": 6, "sampler": {"type": "random", "seed": 3},
              "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}, "promote": False},
    "data": {"synthetic": {"rows": 3000, "seed": 1, "max_cardinality": 200}},
    "training": {"batch_size": 256, "max_epochs": 3, "patience": 2, "seed": 0, "device": "cpu", "threads": 1},
    "policy_configs": {"scoring_policy": {
        "embedding_dim": {"choices": [4, 8]}, "deep_hidden_units": {"choices": [[16], [16, 8]]},
        "activation_fn": "relu", "dropout": 0.0, "learning_rate": {"low": 1.0e-4, "high": 3.0e-2, "log": True}}},
}


def write_study(folder: Path, document: dict = TINY_STUDY, filename: str | None = None, *,
                sort_keys: bool = True, **changes) -> Path:
    """Write `document` as folder/filename (by default the study's name + .yaml) and return its path. A change
    `section__key=value` sets one key of one section (made if missing), e.g. study__n_trials=2; `section=value`
    replaces the whole section. The document itself is never changed. sort_keys=False keeps the document's order
    (for tests that name a line)."""
    document = copy.deepcopy(document)
    for change, value in changes.items():
        section, _, key = change.partition("__")
        if key:
            document.setdefault(section, {})[key] = value
        else:
            document[section] = value
    path = Path(folder) / (filename or f"{document['study']['name']}.yaml")
    path.write_text(yaml.safe_dump(document, sort_keys=sort_keys))
    return path


@contextlib.contextmanager
def killed_at_exit(processes):
    """Kill the multiprocessing children still alive when the block ends, however it ends (a failed assertion, a
    pytest-timeout): one left waiting on a barrier would otherwise hang the interpreter's exit, which joins them."""
    try:
        yield processes
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(timeout=10)


def truncate(path: Path) -> None:
    """Damage a file as an interrupted copy would: its second half is gone."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def stored_policy_dir(client, name: str, version) -> Path:
    """A registered version's policy folder inside a local artifact store (plain files), to damage it."""
    mv = client.get_model_version(name, str(version))
    model_id = mv.model_id or mv.source.removeprefix("models:/")
    location = client.get_logged_model(model_id).artifact_location
    found = [p.parent for p in Path(unquote(urlparse(location).path)).rglob("weights.pt")]
    assert len(found) == 1, found
    return found[0]
