"""The layer contracts of ``.importlinter`` (DESIGN.md 6, "Layers") and the
lint rules of ``pyproject.toml`` hold for the tree; the contracts catch an
import that points up a floor or from one plugin into another."""
import configparser
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

from _helpers import REPO_ROOT

CONFIG = '.importlinter'
# lint-imports of this interpreter's environment (the console script may not
# be on PATH when the tests run from a venv without activating it)
LINT_IMPORTS = [
    sys.executable, '-c',
    'from importlinter.cli import lint_imports_command; '
    'lint_imports_command()', '--no-cache', '--no-logo', CONFIG
]


def contract_name(contract_id):
    parser = configparser.ConfigParser()
    parser.read(osp.join(REPO_ROOT, CONFIG))
    return parser[f'importlinter:contract:{contract_id}']['name']


def lint_imports(root):
    """Run lint-imports on the packages under ``root`` (the working directory
    and first on PYTHONPATH, so an editable install of vistok cannot stand in
    for them); returns ``(exit code, output, names of broken contracts)``."""
    env = dict(os.environ, PYTHONPATH=root, PYTHONDONTWRITEBYTECODE='1')
    proc = subprocess.run(LINT_IMPORTS, cwd=root, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=300)
    broken = {
        line[:-len(' BROKEN')]
        for line in proc.stdout.splitlines() if line.endswith(' BROKEN')
    }
    return proc.returncode, proc.stdout, broken


def copy_tree(dst):
    """``vistok/``, ``projects/`` and the contracts copied under ``dst``."""
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
    for name in ('vistok', 'projects'):
        shutil.copytree(osp.join(REPO_ROOT, name), osp.join(dst, name),
                        ignore=ignore)
    shutil.copy(osp.join(REPO_ROOT, CONFIG), dst)
    return str(dst)


def add_import(root, module_path, statement):
    with open(osp.join(root, module_path), 'a') as f:
        f.write(f'\n{statement}\n')


@pytest.fixture(scope='module')
def clean_copy(tmp_path_factory):
    return copy_tree(tmp_path_factory.mktemp('clean'))


def test_import_contracts_hold():
    code, output, broken = lint_imports(REPO_ROOT)
    assert code == 0 and not broken, output


def test_unmodified_copy_passes(clean_copy):
    # the baseline of the two tests below: the copy itself is clean
    code, output, broken = lint_imports(clean_copy)
    assert code == 0 and not broken, output


def test_model_part_importing_engine_is_caught(tmp_path):
    root = copy_tree(tmp_path)
    add_import(root, 'vistok/models/quantizers/vq.py', 'import vistok.engine')
    code, output, broken = lint_imports(root)
    assert code != 0, output
    assert contract_name('no-engine-in-models') in broken, output
    assert contract_name('floors') in broken, output  # engine is floors up
    assert 'vistok.models.quantizers.vq -> vistok.engine' in output, output


def test_plugin_importing_another_plugin_is_caught(tmp_path):
    root = copy_tree(tmp_path)
    add_import(root, 'projects/TokenUnify/tokenunify/tokens.py',
               'import projects.example_project.example_project')
    code, output, broken = lint_imports(root)
    assert code != 0, output
    assert broken == {contract_name('independent-projects')}, output
    assert 'projects.TokenUnify' in output, output


def test_ruff_check_passes():
    proc = subprocess.run(
        [
            sys.executable, '-m', 'ruff', 'check', '--no-cache',
            '--output-format=concise', 'vistok', 'tools', 'projects', 'tests',
            'bench'
        ],
        cwd=REPO_ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=300)
    assert proc.returncode == 0, proc.stdout
