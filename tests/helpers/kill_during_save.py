"""Runs `experiments.train` with its arguments, but SIGKILLs itself while saving the checkpoint
of step `--kill_at_save_of`: after orbax has written every file of it into the temporary
directory, before the rename that makes it a checkpoint. The worst moment to die.

    python tests/helpers/kill_during_save.py --kill_at_save_of 20 --config ... --workdir ...
"""

import os
import signal
import sys

from orbax.checkpoint._src.path import atomicity

step = int(sys.argv[sys.argv.index("--kill_at_save_of") + 1])
i = sys.argv.index("--kill_at_save_of")
sys.argv = sys.argv[:i] + sys.argv[i + 2:]
finalize = atomicity.AtomicRenameTemporaryPath.finalize


async def finalize_or_die(self, *args, **kwargs):
    if self.get_final().name == str(step):  # the step directory itself, its items written
        os.kill(os.getpid(), signal.SIGKILL)
    return await finalize(self, *args, **kwargs)


atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_die

from absl import app  # noqa: E402

from experiments import train  # noqa: E402

train.check_override_keys(sys.argv[1:])
app.run(train.main)
