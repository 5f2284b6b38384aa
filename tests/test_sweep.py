"""Sweeps on Ray Tune, end to end: a two-node cluster gives the local results, a killed sweep resumes
without re-running its finished trials, a crashing trial is marked failed while the sweep goes on, and a
sweep's preset trains in `train.ipynb`. Each test starts (and stops) its own Ray."""

import json, os, signal, socket, subprocess, sys, tempfile, time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip('ray')
from neurofc.sweep import run_sweep, start_ray

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden=8, d_ff=16, batch_size=8, train_limit=32)  # fixed for every trial: seconds per trial
SPACE = {'lr': {'loguniform': [3e-4, 3e-3]}, 'weight_decay': {'loguniform': [1e-5, 1e-3]}}
KW = dict(
    monkey='beignet', phase='reference', epochs=2, space=SPACE, overrides=TINY, quick=True, device='cpu'
)


@pytest.fixture(autouse=True)
def no_ray_left():
    yield
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ray(*args, env):
    r = subprocess.run(
        [str(Path(sys.executable).parent / 'ray'), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_two_node_cluster_gives_the_local_results(tmp_path):
    temp = Path(tempfile.mkdtemp(prefix='nfr', dir='/tmp'))  # short: Ray's socket paths
    port = _free_port()
    env = {
        **os.environ,
        'RAY_AUTH_MODE': 'token',
    }  # `ray start` clusters use tokens; Ray reads this at import
    code = (
        f"from neurofc.sweep import run_sweep; t = run_sweep(trials=2, address='127.0.0.1:{port}', "
        f"runs_dir={str(tmp_path / 'cluster')!r}, **{KW!r}); t.to_csv({str(tmp_path / 'cluster.csv')!r})"
    )
    try:
        _ray(
            'start',
            '--head',
            f'--port={port}',
            '--num-cpus=1',
            f'--temp-dir={temp}',
            '--include-dashboard=false',
            '--disable-usage-stats',
            env=env,
        )
        _ray('start', f'--address=127.0.0.1:{port}', '--num-cpus=1', env=env)  # a second node
        r = subprocess.run(
            [sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert f'the Ray cluster at 127.0.0.1:{port}: 2 node(s), 2 CPUs' in r.stdout, r.stdout[-3000:]
    finally:
        for sig in ('-TERM', '-KILL'):  # this cluster's processes only
            subprocess.run(['pkill', sig, '-f', str(temp)])
            time.sleep(2)
        assert (
            subprocess.run(['pgrep', '-f', str(temp)], capture_output=True).returncode == 1
        ), 'Ray left running'
    on_cluster = pd.read_csv(tmp_path / 'cluster.csv', index_col=0, keep_default_na=False, na_values=[''])
    local = run_sweep(trials=2, runs_dir=tmp_path / 'local', **KW)
    cols = ['order', 'lr', 'weight_decay', 'state', 'epochs']
    pd.testing.assert_frame_equal(on_cluster[cols], local[cols], check_dtype=False)
    assert (local.state == 'finished').all()
    pd.testing.assert_series_equal(on_cluster.val_total, local.val_total, rtol=1e-6)
    # trial 1 is the preset's own point
    assert (local.lr[0], local.weight_decay[0]) == (5e-4, 1e-4)


def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    code = (
        f"from neurofc.sweep import run_sweep; run_sweep(trials=4, runs_dir={str(tmp_path)!r}, "
        f"name='killed', **{KW!r})"
    )
    p = subprocess.Popen(
        [sys.executable, '-c', code],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    trials = tmp_path / 'sweeps' / 'killed' / 'trials'
    t0 = time.time()
    while not list(trials.glob('*/metrics.json')) and time.time() - t0 < 300:
        time.sleep(0.5)
    os.killpg(p.pid, signal.SIGKILL)  # the driver and the Ray it started
    p.wait()
    done = {m.parent.name: (m.stat().st_mtime_ns, m.read_bytes()) for m in trials.glob('*/metrics.json')}
    assert done, 'no trial finished within 5 minutes'
    table = run_sweep(trials=4, runs_dir=tmp_path, name='killed', **KW)
    assert len(table) == 4 and table.val_total.notna().all(), table
    for tid, (mtime, text) in done.items():  # finished before the kill: not re-run
        m = trials / tid / 'metrics.json'
        assert (m.stat().st_mtime_ns, m.read_bytes()) == (mtime, text)
    assert (tmp_path / 'sweeps' / 'killed' / 'best.json').exists()
    with pytest.raises(ValueError, match="was started with other settings \\(trials: 4 then, 5 now\\)"):
        run_sweep(trials=5, runs_dir=tmp_path, name='killed', **KW)


def test_a_crashing_trial_is_marked_failed_and_the_sweep_goes_on(tmp_path):
    space = {'lr': {'loguniform': [5e-4, 1e12]}}  # the preset's 5e-4, then a diverging rate
    table = run_sweep(
        trials=2, runs_dir=tmp_path, **{**KW, 'space': space, 'overrides': {**TINY, 'grad_clip': 0.0}}
    )
    assert list(table.state) == ['finished', 'failed'], table
    assert 'the run diverged' in table.error[1], table.error[1]
    best = json.loads((tmp_path / 'sweeps' / 'beignet-reference' / 'best.json').read_text())
    assert best['overrides'] == {'lr': 5e-4} and best['trial'] == table.trial[0]


def test_bad_sweeps_fail_before_anything_is_written(tmp_path):
    with pytest.raises(ConnectionError, match="Cannot reach a Ray cluster at '127.0.0.1:1'"):
        run_sweep(trials=2, address='127.0.0.1:1', runs_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match='trials must be an integer >= 1, found 0'):
        run_sweep(trials=0, runs_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match='the search space is empty'):
        run_sweep(trials=2, runs_dir=tmp_path, **{**KW, 'space': {}})
    assert not (tmp_path / 'sweeps').exists()


def test_train_notebook_takes_a_sweeps_preset(tmp_path, monkeypatch):
    import papermill as pm

    preset = tmp_path / 'best.json'
    preset.write_text(
        json.dumps(
            dict(
                neurofc_preset=1,
                phase='reference',
                monkey='beignet',
                sweep='s',
                overrides={'lr': 7.5e-4, 'dropout': 0.05},
                val_total=1.0,
            )
        )
    )
    monkeypatch.setenv('IN_TEST', '1')  # quick settings, runs in a temporary folder ...
    monkeypatch.setenv('TMPDIR', str(tmp_path))  # ... under tmp_path
    pm.execute_notebook(
        str(ROOT / 'nbs' / 'train.ipynb'),
        str(tmp_path / 'train.ipynb'),
        kernel_name='python3',
        progress_bar=False,
        cwd=str(ROOT / 'nbs'),
        parameters=dict(preset=str(preset), phase='paper', overrides={'dropout': 0.1}),
    )
    cfg = json.loads(next(tmp_path.glob('neurofc-train-*/*/config.json')).read_text())
    # the preset's phase and rate; an explicit override wins over the preset's
    assert (cfg['phase'], cfg['lr'], cfg['dropout'], cfg['mixup_alpha']) == ('reference', 7.5e-4, 0.1, 0.15)
