"""The `deepfm` command line: thin click commands over the library, one module per group of commands; bad input is
one line and exit code 2. Heavy libraries (torch, MLflow, Optuna) are imported inside the commands that use them, so
`deepfm --help`, `status` and a cache-hit `data prepare` start fast."""

from __future__ import annotations

import click

from deepfm_tuner.model.errors import UserInputError
from deepfm_tuner.tuner.cli import data, registry, servers, study, train
from deepfm_tuner.tuner.cli.logs import quiet_defaults
from deepfm_tuner.tuner.stores.disks import DISK_ERRNOS, disk_error


class InputError(click.ClickException):
    """Shown as 'Error: <one line>' with exit code 2, no traceback."""

    exit_code = 2


class DeepfmGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserInputError as exc:
            raise InputError(str(exc)) from None
        except OSError as exc:  # a disk that filled up (or turned read-only) after the checks at the edge
            if exc.errno not in DISK_ERRNOS:
                raise
            raise InputError(str(disk_error(exc, exc.filename or "the disk", "free some space or write elsewhere"))) from None


@click.group(cls=DeepfmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deepfm-tuner")
def main() -> None:
    """Tune, track, promote and serve DeepFM click-through-rate scoring policies."""
    quiet_defaults()


main.add_command(data.data)
for command in (train.train, train.evaluate, study.tune, study.init, study.status, study.report, study.promote,
                servers.ui, servers.dashboard, registry.pull, registry.score, registry.history, registry.rollback,
                registry.diff):
    main.add_command(command)


def run() -> None:  # pragma: no cover - console-script shim
    main(prog_name="deepfm")
