"End-to-end training tests: the papermill workflow on synthetic beignet, refusal to overwrite, and resume after a kill."
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _papermill(out_dir: Path, **params):
    args = [sys.executable, '-m', 'papermill', str(ROOT / 'nbs' / 'train.ipynb'), str(out_dir / f"{params['phase']}.ipynb"), '-k', 'python3']
    for k, v in params.items(): args += ['-p', k, str(v)]
    return subprocess.run(args, capture_output=True, text=True, cwd=out_dir, env={**os.environ, 'IN_TEST': ''})


@pytest.mark.parametrize('phase', ['paper', 'compete'])
def test_train_notebook_quick(tmp_path, phase):
    runs = tmp_path / 'runs'
    r = _papermill(tmp_path, phase=phase, monkey='beignet', quick=True, runs_dir=str(runs), data_dir=str(ROOT / 'data'))
    assert r.returncode == 0, r.stderr[-3000:]
    run = runs / f'beignet-{phase}-seed42'
    for f in ['config.json', 'stats.json', 'router.json', 'history.csv', 'metrics.json', 'best.pt', 'last.pt']:
        assert (run / f).exists(), f
    m = json.loads((run / 'metrics.json').read_text())
    assert m['synthetic'] is True
    assert {'same_day', 'cross_date', 'total'} <= set(m['val'])
    assert m['val']['total'] < m['persistence']['total'], (m['val'], m['persistence'])
    # the executed notebook says the data were synthetic, in bold
    assert 'synthetic drop-in data' in (tmp_path / f'{phase}.ipynb').read_text()
    # a second call refuses to overwrite the run
    r2 = _papermill(tmp_path, phase=phase, monkey='beignet', quick=True, runs_dir=str(runs), data_dir=str(ROOT / 'data'))
    assert r2.returncode != 0 and 'already exists; pass resume=True' in r2.stderr + r2.stdout


def test_train_notebook_seeds_as_papermill_passes_them(tmp_path):
    "`-p seeds 7` and `-p seeds \"[1, 2]\"` (papermill passes the list as text) each train one run per seed."
    runs = tmp_path / 'runs'
    for seeds, names in [('[1, 2]', ['seed1', 'seed2']), ('7', ['seed7'])]:
        r = _papermill(tmp_path, phase='paper', model='persistence', monkey='beignet', quick=True, seeds=seeds,
                       runs_dir=str(runs), data_dir=str(ROOT / 'data'))
        assert r.returncode == 0, r.stderr[-3000:]
        for n in names: assert (runs / f'beignet-persistence-{n}' / 'seal.json').exists(), n
    assert sorted(p.name for p in runs.iterdir()) == [f'beignet-persistence-seed{k}' for k in (1, 2, 7)]
