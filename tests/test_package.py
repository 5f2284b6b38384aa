"End-to-end checks of the installed package and of the repository's CI guards."
import configparser, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_version_matches_settings():
    import neurofc
    cfg = configparser.ConfigParser(); cfg.read(ROOT / 'settings.ini')
    assert neurofc.__version__ == cfg['DEFAULT']['version']
    out = subprocess.run([sys.executable, '-c', 'import neurofc; print(neurofc.__version__)'], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == neurofc.__version__


def test_console_command():
    exe = shutil.which('neurofc')
    assert exe, 'the neurofc console script is not installed'
    out = subprocess.run([exe, 'info', '--device', 'cpu'], capture_output=True, text=True, check=True)
    assert 'device: cpu' in out.stdout
    bad = subprocess.run([exe, 'info', '--device', 'tpu'], capture_output=True, text=True)
    assert bad.returncode != 0 and "Unknown device 'tpu'" in bad.stderr


def _sandbox(tmp_path):
    "A throwaway git repo holding the notebooks, package and CI scripts."
    for name in ['nbs', 'neurofc', '.ci']: shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints'))
    for name in ['settings.ini', 'pyproject.toml', 'README.md']: shutil.copy(ROOT / name, tmp_path / name)
    git = lambda *a: subprocess.run(['git', *a], cwd=tmp_path, check=True, capture_output=True)
    git('init', '-q'); git('add', '-A'); git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'x')
    return tmp_path


def test_check_sync_catches_unexported_edit(tmp_path):
    repo = _sandbox(tmp_path)
    ok = subprocess.run(['bash', '.ci/check-sync'], cwd=repo, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    nb = repo / 'nbs' / '00_core.ipynb'
    nb.write_text(nb.read_text().replace('def seed_everything(seed: int) -> int:', 'def seed_everything(seed: int, extra=None) -> int:'))
    subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qam', 'edit'], cwd=repo, check=True, capture_output=True)
    bad = subprocess.run(['bash', '.ci/check-sync'], cwd=repo, capture_output=True, text=True)
    assert bad.returncode != 0
    assert 'neurofc/ does not match the notebooks' in bad.stdout


def test_check_sync_catches_outputs(tmp_path):
    import json
    repo = _sandbox(tmp_path)
    nb = repo / 'nbs' / '00_core.ipynb'
    d = json.loads(nb.read_text())
    cell = next(c for c in d['cells'] if c['cell_type'] == 'code')
    cell['outputs'] = [{'output_type': 'stream', 'name': 'stdout', 'text': ['hi\n']}]; cell['execution_count'] = 3
    nb.write_text(json.dumps(d, indent=1) + '\n')
    subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qam', 'outputs'], cwd=repo, check=True, capture_output=True)
    bad = subprocess.run(['bash', '.ci/check-sync'], cwd=repo, capture_output=True, text=True)
    assert bad.returncode != 0
    assert 'carry outputs or metadata' in bad.stdout


def test_notebooks_carry_unique_cell_ids():
    "nbformat 4.5 cells need ids (else papermill and nbconvert warn `MissingIDFieldWarning` on every run)."
    import json
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        ids = [c.get('id') for c in json.loads(nb.read_text())['cells']]
        assert all(ids) and len(set(ids)) == len(ids), f'{nb.name}: cells without ids or with repeated ids'


def test_papermill_reads_every_parameter():
    "papermill parses each line of the workflow notebooks' parameters cells (else it prints 'Unable to parse line')."
    import json
    from papermill.translators import PythonTranslator
    for name in ('train.ipynb', 'report.ipynb', 'features.ipynb'):
        cells = json.loads((ROOT / 'nbs' / name).read_text())['cells']
        src = next(''.join(c['source']) for c in cells if 'parameters' in c['metadata'].get('tags', []))
        names = [l.split('=')[0].strip() for l in src.splitlines() if l.strip() and not l.lstrip().startswith('#')]
        assert [p.name for p in PythonTranslator.inspect({'source': src})] == names, name
