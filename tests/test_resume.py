"A run killed mid-training and resumed trains only the remaining epochs and reaches exactly the metrics of an uninterrupted run."
import csv, json, os, signal, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
from neurofc.synthetic import ensure_synthetic
from neurofc.config import phase_config
from neurofc.train import train_seeds
cfg = phase_config('compete', 'beignet', quick=True, epochs=5, val_every=1, patience=100, train_limit=48, hidden=16, d_ff=32)
train_seeds(cfg, ensure_synthetic({data!r}, 'beignet'), seeds=[3], runs_dir=sys.argv[1], device='cpu',
            resume=sys.argv[2] == 'resume', progress=False)
"""


def _run(script, runs, mode):
    return subprocess.Popen([sys.executable, '-c', script, str(runs), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_and_resume(tmp_path):
    script = SCRIPT.format(data=str(ROOT / 'data'))
    ref = _run(script, tmp_path / 'ref', 'fresh'); out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-2000:]
    p = _run(script, tmp_path / 'cut', 'fresh')
    hist = tmp_path / 'cut' / 'beignet-compete-seed3' / 'history.csv'
    t0 = time.time()
    while time.time() - t0 < 300:           # kill -9 once two epochs are on disk
        if hist.exists() and len(hist.read_text().splitlines()) >= 3: break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (tmp_path / 'cut' / 'beignet-compete-seed3' / 'metrics.json').exists(), 'killed too late'
    refused = _run(script, tmp_path / 'cut', 'fresh'); _, err = refused.communicate(timeout=120)
    assert refused.returncode != 0 and 'already exists; pass resume=True' in err
    res = _run(script, tmp_path / 'cut', 'resume'); out, err = res.communicate(timeout=600)
    assert res.returncode == 0, err[-2000:]
    k = int(out.split('Resuming beignet-compete-seed3 at epoch ')[1].split()[0])
    assert k >= 2
    with open(hist) as f: rows = list(csv.DictReader(f))
    # epochs before the kill were trained by the first process (segment 0), only the remaining ones by the resumed one
    assert [(int(r['epoch']), int(r['segment'])) for r in rows] == [(e, 0) for e in range(k)] + [(e, 1) for e in range(k, 5)]
    run = tmp_path / 'cut' / 'beignet-compete-seed3'
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    again = _run(script, tmp_path / 'cut', 'resume'); out, err = again.communicate(timeout=600)
    assert again.returncode == 0 and 'is finished; returning its metrics (nothing written)' in out, err[-2000:]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before           # a finished run is read-only
    a = json.loads((tmp_path / 'ref' / 'beignet-compete-seed3' / 'metrics.json').read_text())
    b = json.loads((tmp_path / 'cut' / 'beignet-compete-seed3' / 'metrics.json').read_text())
    assert a['val'] == b['val'] and a['val_by_member'] == b['val_by_member']   # exactly equal on CPU
    assert a['epochs_run'] == b['epochs_run'] == 5
