"""
tox's inline plugin for primed (tox loads C{toxfile.py} next to C{tox.ini}).

  - Interpreters: tox (and uv, which makes the environments: tox-uv) look
    for C{python3.X} on C{PATH}; the Pythons this project is tested on may
    also live in pyenv's C{~/.pyenv/versions} (C{$PYENV_ROOT/versions})
    without being on C{PATH}.  Each one found there is added to tox's
    C{--discover} list, and its directory to the end of C{PATH} (so one on
    C{PATH} already is used first).
  - Missing interpreters: on a developer's machine an environment whose
    Python is not installed is skipped (C{skip_missing_interpreters} in
    tox.ini); under CI (C{CI=true}, as CI services and C{.ci/run} set) it
    fails the run, unless C{--skip-missing-interpreters} says otherwise.
"""

import glob
import os
import re

from tox.plugin import impl


def _pyenvPythons():
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3.*"))
    return sorted(path for path in found if re.search(r"/python3\.\d+$", path))


@impl
def tox_add_core_config(core_conf, state):
    options = state.conf.options
    found = _pyenvPythons()
    if hasattr(options, "discover"):
        options.discover = [*options.discover, *found]
    path = os.environ.get("PATH", os.defpath).split(os.pathsep)
    path += [d for d in dict.fromkeys(os.path.dirname(p) for p in found) if d not in path]
    os.environ["PATH"] = os.pathsep.join(path)
    if (
        os.environ.get("CI", "").lower() in ("true", "1", "yes")
        and getattr(options, "skip_missing_interpreters", "config") == "config"
    ):
        options.skip_missing_interpreters = "false"
