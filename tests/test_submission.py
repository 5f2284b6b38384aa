"""Codabench submission: export, the challenge's ingestion protocol in an isolated interpreter (where neurofc cannot be
imported), scoring equal to `neurofc.evaluate`'s, bad inputs, N = 0 and N = 1, and the `neurofc export` command."""
import ast, contextlib, io, json, os, sys, types, warnings, zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import neurofc.train
from neurofc.cli import main
from neurofc.config import phase_config
from neurofc.fixtures import tiny_config, ALL_SWITCHES
from neurofc.data import get_monkey, load_npz, mask_future, save_npz, session_path
from neurofc.evaluate import evaluate
from neurofc.infer import MANIFEST
from neurofc.submission import (challenge_test_files, export_submission, load_model_file, reference_predict,
                                run_ingestion, score_predictions, shipped_files, zip_listing)
from neurofc.synthetic import ensure_synthetic
from neurofc.train import train_seeds

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "Synthetic challenge tree and cheap finished runs of both monkeys."
    torch.set_num_threads(1)
    w = tmp_path_factory.mktemp('submission')
    data = ensure_synthetic(w / 'data', 'affi'); ensure_synthetic(w / 'data', 'beignet')
    def train(cfg, seeds): return train_seeds(cfg, data, seeds, w / 'runs', 'cpu', progress=False)
    with contextlib.redirect_stdout(io.StringIO()):
        runs = {'affi-gru': train(tiny_config(monkey='affi', model='gru', epochs=1, train_limit=16), [1, 2]),
                'affi-ridge': train(phase_config('paper', 'affi', model='ridge'), [1]),
                'beignet-compete': train(tiny_config('compete', epochs=1, **ALL_SWITCHES), [1, 2]),
                'beignet-persistence': train(phase_config('paper', 'beignet', model='persistence'), [1]),
                'affi-stitched': train(tiny_config('compete', 'affi', 'stitched', hidden=8, d_ff=16, latents=4, epochs=1,
                                                   adapter='attention', session_embedding=True), [1])}
    return types.SimpleNamespace(dir=w, data=data, runs=runs)


def _mse(df, model, test_set):
    return df[(df.model == model) & (df.test_set == test_set) & (df.metric == 'mse')].value.item()


def _check_isolated(res, work):
    "The ingestion interpreter had no neurofc but the shipped copy, saw only stdlib + torch/numpy + the appended folders, ran elsewhere."
    sub = str((work / 'submission').resolve())
    assert res['neurofc_importable'] is False
    assert res['neurofc_files'] and all(f.startswith(sub + os.sep + 'neurofc' + os.sep) for f in res['neurofc_files'])
    assert res['sys_path'][-2:] == [res['output_dir'], sub]                      # appended, as ingestion.py does
    assert all(p in res['site_packages'] or p.startswith(sys.base_prefix) for p in res['sys_path'][:-2]), res['sys_path']
    assert Path(res['model_file']).resolve().parent == Path(sub)
    assert Path(res['cwd']).resolve() not in (ROOT, Path(sub), Path.cwd().resolve())


@pytest.mark.parametrize('affi,beignet,affi_label,beignet_label', [
    ('affi-gru', 'beignet-compete', 'gru (2 seeds)', 'compete (2 seeds)'),              # multi-seed ensembles
    ('affi-ridge', 'beignet-persistence', 'ridge seed1', 'persistence seed1'),          # single runs
    ('affi-stitched', 'beignet-persistence', 'stitched seed1', 'persistence seed1')])   # per-array adapters
def test_ingestion_scores_equal_evaluate(world, tmp_path, affi, beignet, affi_label, beignet_label):
    runs = {'affi': world.runs[affi], 'beignet': world.runs[beignet]}
    z = export_submission(runs, tmp_path / 'sub')
    res = run_ingestion(z, world.data, tmp_path / 'ingest', threads=1)
    _check_isolated(res, tmp_path / 'ingest')
    for name, r in res['files'].items():
        assert r['shape'] == r['input_shape'][:3] and r['dtype'] == 'float32', (name, r)
    scores = score_predictions(res['output_dir'], world.data)
    assert list(scores) == ['affi', 'affi_private', 'beignet', 'beignet_private_1', 'beignet_private_2', 'total']
    ev = {m: evaluate(ds, world.data, save=False) for m, ds in runs.items()}
    expect = {n: _mse(ev['affi'], affi_label, n) for n in ('affi', 'affi_private')}
    expect |= {n: _mse(ev['beignet'], beignet_label, n) for n in ('beignet', 'beignet_private_1', 'beignet_private_2')}
    for n, v in expect.items(): assert scores[n] == pytest.approx(v, rel=1e-4), n
    assert scores['total'] == pytest.approx(np.mean(list(expect.values())), rel=1e-4)
    # the saved predictions: bins 0-9 are the masked input's context LMP
    for monkey, files in challenge_test_files(world.data):
        for name, path in files:
            with np.load(Path(res['output_dir']) / f'test_{name}.predictions.npz') as f: pred = f['arr_0']
            np.testing.assert_array_equal(pred[:, :10], load_npz(path)[:, :10, :, 0])


def test_ingestion_with_test_time_adaptation(world, tmp_path):
    """A submission that adapts to each test file ('stats', 'coral' and self-supervised 'steps') runs the isolated
    ingestion on a folder holding the masked test files only (no truth anywhere to read), and forecasts exactly
    what neurofc's own adapted forecaster does."""
    import shutil
    from neurofc.runs import resolve_runs
    runs = {'affi': world.runs['affi-stitched'], 'beignet': world.runs['beignet-persistence']}
    with pytest.raises(ValueError, match="Test-time 'steps' need models that reconstruct their input"):
        export_submission({'beignet': world.runs['beignet-persistence']}, tmp_path / 'bad', adapt='steps')
    tta = dict(adapt=['stats', 'coral', 'steps'], adapt_steps=3, adapt_lr=1e-3)
    with pytest.raises(ValueError, match="Test-time 'steps'"):
        export_submission(runs, tmp_path / 'bad2', adapt=['stats', 'steps'])        # persistence cannot step
    with pytest.raises(ValueError, match=r"Feature alignment \('coral'\) needs each model's training feature"):
        export_submission({'beignet': world.runs['beignet-persistence']}, tmp_path / 'bad3', adapt='coral')
    z = export_submission({'affi': runs['affi']}, tmp_path / 'sub', adapt=tta['adapt'], adapt_steps=3)
    run = json.loads((tmp_path / 'sub' / MANIFEST).read_text())['monkeys']['affi']['runs'][0]
    assert run['tta'] == tta and (tmp_path / 'sub' / run['features']).exists()
    masked = tmp_path / 'masked'
    shutil.copytree(Path(world.data) / 'test', masked / 'test')
    assert not list(masked.rglob('*truth*')) and not list(masked.rglob('train*'))
    res = run_ingestion(z, masked, tmp_path / 'ingest', threads=1, monkeys=('affi',))
    _check_isolated(res, tmp_path / 'ingest')
    (_, files), = challenge_test_files(masked, ('affi',))
    for name, path in files:
        with np.load(Path(res['output_dir']) / f'test_{name}.predictions.npz') as f: pred = f['arr_0']
        x = load_npz(path)
        ref = reference_predict(resolve_runs(runs['affi']), x, tta=tta)
        np.testing.assert_allclose(pred, ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max())
        plain = reference_predict(resolve_runs(runs['affi']), x)
        assert not np.allclose(pred[:, 10:], plain[:, 10:])                            # it did adapt


def test_zip_layout_and_overwrite(world, tmp_path):
    runs = {'affi': world.runs['affi-ridge'], 'beignet': world.runs['beignet-compete']}
    z = export_submission(runs, tmp_path / 'sub')
    assert z == tmp_path / 'sub.zip'
    names = [n for n, _ in zip_listing(z)]
    assert all('/' not in n for n in names if not n.endswith('.py')) and 'requirements.txt' not in names
    assert sorted(names) == sorted(p.relative_to(tmp_path / 'sub').as_posix() for p in (tmp_path / 'sub').rglob('*')
                                   if p.is_file())                                    # no stray files (no __pycache__)
    shipped = shipped_files()                                                          # the library's files, byte for byte
    assert sorted(n for n in names if n.endswith('.py')) == sorted(shipped)
    with zipfile.ZipFile(z) as f:
        for n, path in shipped.items(): assert f.read(n) == path.read_bytes(), n
    man = json.loads((tmp_path / 'sub' / MANIFEST).read_text())
    assert [len(man['monkeys'][m]['runs']) for m in ('affi', 'beignet')] == [1, 2]
    assert man['monkeys']['beignet']['runs'][0]['model'] == 'amag' and man['monkeys']['affi']['n_channels'] == 239
    chosen = [json.loads((d / 'metrics.json').read_text())['members'] for d in world.runs['beignet-compete']]
    assert [len(r['members']) for r in man['monkeys']['beignet']['runs']] == [len(m) for m in chosen]  # as chosen
    assert {f for m in man['monkeys'].values() for r in m['runs'] for f in (*r['members'], r['stats'], r['router'])} <= set(names)
    with pytest.raises(FileExistsError, match='pass overwrite=True'): export_submission(runs, tmp_path / 'sub')
    (tmp_path / 'sub').rename(tmp_path / 'moved')                                      # the zip alone also blocks
    with pytest.raises(FileExistsError, match='sub.zip already exist'): export_submission(runs, tmp_path / 'sub')
    assert export_submission({'affi': world.runs['affi-ridge'], 'beignet': world.runs['beignet-persistence']},
                             tmp_path / 'sub', overwrite=True) == z
    assert json.loads((tmp_path / 'sub' / MANIFEST).read_text())['monkeys']['beignet']['runs'][0]['model'] == 'persistence'
    (tmp_path / 'other').mkdir(); (tmp_path / 'other' / 'notes.txt').write_text('mine')  # never deletes a non-submission
    with pytest.raises(FileExistsError, match='does not look like a neurofc submission'):
        export_submission(runs, tmp_path / 'other', overwrite=True)
    assert (tmp_path / 'other' / 'notes.txt').exists()


def test_export_refuses_bad_runs(world, tmp_path):
    with pytest.raises(ValueError, match="runs given for 'beignet' are runs of 'affi'"):
        export_submission({'beignet': world.runs['affi-ridge']}, tmp_path / 'x')
    with pytest.raises(ValueError, match='different monkeys mixed'):
        export_submission({'affi': world.runs['affi-ridge'] + world.runs['beignet-compete']}, tmp_path / 'x')
    with pytest.warns(UserWarning, match=r"No runs for \['beignet'\]"):
        export_submission({'affi': world.runs['affi-ridge']}, tmp_path / 'y')
    assert not (tmp_path / 'x').exists() and not (tmp_path / 'x.zip').exists()


def test_exported_model_inputs(world, tmp_path):
    "The exported `model.py` (executed as a file): shape errors, N = 0, N = 1, batches, against neurofc's prediction."
    runs = {'affi': world.runs['affi-gru'], 'beignet': world.runs['beignet-compete']}
    export_submission(runs, tmp_path / 'sub')
    gen = load_model_file(tmp_path / 'sub' / 'model.py')
    for monkey, C, other in (('affi', 239, 89), ('beignet', 89, 239)):
        m = gen.Model(monkey, root=str(tmp_path / 'sub'), batch_size=5)
        m.load()
        assert m.device.type == ('cuda' if torch.cuda.is_available() else 'cpu')
        with pytest.raises(ValueError, match=f'expected {C} channels on axis 2, found {other}'): m.predict(np.zeros((2, 20, other, 9), np.float32))
        with pytest.raises(ValueError, match=r'expected 4 dimensions \(N, 20, C, 9\), found 3'): m.predict(np.zeros((20, C, 9), np.float32))
        with pytest.raises(ValueError, match=r'expected 4 dimensions \(N, 20, C, 9\), found 5'): m.predict(np.zeros((1, 2, 20, C, 9), np.float32))
        with pytest.raises(ValueError, match='expected 20 time bins on axis 1, found 10'): m.predict(np.zeros((2, 10, C, 9), np.float32))
        with pytest.raises(ValueError, match='expected 9 features on axis 3, found 1'): m.predict(np.zeros((2, 20, C, 1), np.float32))
        y0 = m.predict(np.zeros((0, 20, C, 9), np.float32))
        assert y0.shape == (0, 20, C) and y0.dtype == np.float32
        s = get_monkey(monkey).registered[-1]
        x = load_npz(session_path(world.data, s, 'test'))[:12]                  # 12 trials in batches of 5
        for xs in (x[:1], x):
            y = m.predict(xs)
            assert isinstance(y, np.ndarray) and y.shape == (len(xs), 20, C) and y.dtype == np.float32
            ref = reference_predict(runs[monkey], xs)
            assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
            np.testing.assert_array_equal(y[:, :10], xs[:, :10, :, 0])
        assert np.isfinite(m.predict(x.astype(np.float64))).all()               # float64 input is accepted
    with pytest.raises(ValueError, match="no model for monkey 'zebra'"): gen.Model('zebra', root=str(tmp_path / 'sub')).load()
    with pytest.raises(FileNotFoundError, match='manifest.json is missing'): gen.Model('affi', root=str(tmp_path)).load()


def test_ingestion_edge_files(world, tmp_path):
    "The protocol end to end on files of 1 and 0 trials."
    z = export_submission({'affi': world.runs['affi-ridge'], 'beignet': world.runs['beignet-compete']}, tmp_path / 'sub')
    edge = tmp_path / 'edge'
    sizes = {'affi': 1, 'affi_private': 0, 'beignet': 0, 'beignet_private_1': 1, 'beignet_private_2': 1}
    for monkey in ('affi', 'beignet'):
        for s in get_monkey(monkey).registered:
            x = load_npz(session_path(world.data, s, 'test'))[:sizes[s.name]]
            save_npz(edge / 'test' / s.test_file, x)
    res = run_ingestion(z, edge, tmp_path / 'ingest', threads=1)
    _check_isolated(res, tmp_path / 'ingest')
    for name, n in sizes.items():
        C = 239 if name.startswith('affi') else 89
        with np.load(Path(res['output_dir']) / f'test_{name}.predictions.npz') as f: assert f['arr_0'].shape == (n, 20, C), name



def test_cli_export(world, tmp_path):
    d = world.dir / 'runs'
    argv = ['export', '--affi', str(d / 'affi-ridge-seed*'), '--beignet', str(d / 'beignet-compete-seed*'), '--out', str(tmp_path / 'cli')]
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err0: rc = main(argv)
    assert rc == 0, err0.getvalue()
    assert 'model.py' in out.getvalue() and f"submission: {tmp_path / 'cli.zip'}" in out.getvalue()
    man = json.loads((tmp_path / 'cli' / MANIFEST).read_text())
    assert [r['run'] for r in man['monkeys']['beignet']['runs']] == ['beignet-compete-seed1', 'beignet-compete-seed2']
    with contextlib.redirect_stderr(io.StringIO()) as err: assert main(argv) == 2
    assert '--overwrite' in err.getvalue()
    with contextlib.redirect_stdout(io.StringIO()): assert main(argv + ['--overwrite']) == 0


def test_final_fit_from_the_notebook_exports_and_passes_ingestion(world, tmp_path):
    "train.ipynb -p final_fit: the validated run retrained on every trial; exported, ingested in isolation, scored as evaluate scores it."
    import nbformat, papermill as pm
    src = world.runs['beignet-compete'][0]
    pm.execute_notebook(str(ROOT / 'nbs' / 'train.ipynb'), str(tmp_path / 'train.ipynb'), kernel_name='python3',
                        progress_bar=False, cwd=str(ROOT / 'nbs'),
                        parameters=dict(final_fit=str(src), data_dir=str(world.data), runs_dir=str(tmp_path / 'runs'),
                                        device='cpu', seeds=5))
    final = tmp_path / 'runs' / 'beignet-compete-final-seed5'
    m = json.loads((final / 'metrics.json').read_text())
    src_m = json.loads((src / 'metrics.json').read_text())
    assert (m['final_fit'], m['final_of'], m['val'], m['epochs_run']) == (True, str(src), None, src_m['best_epoch'] + 1)
    out = json.dumps([c.get('outputs') for c in nbformat.read(tmp_path / 'train.ipynb', as_version=4).cells])
    assert 'A final fit has no validation score' in out
    runs = {'affi': world.runs['affi-ridge'], 'beignet': [final]}
    z = export_submission(runs, tmp_path / 'sub')
    res = run_ingestion(z, world.data, tmp_path / 'ingest', threads=1)
    _check_isolated(res, tmp_path / 'ingest')
    scores = score_predictions(res['output_dir'], world.data)
    ev = evaluate([final], world.data, save=False)
    for name in ('beignet', 'beignet_private_1', 'beignet_private_2'):
        assert scores[name] == pytest.approx(_mse(ev, 'compete-final seed5', name), rel=1e-4), name
    argv = ['export', '--affi', str(world.runs['affi-ridge'][0]), '--beignet', str(final), '--out', str(tmp_path / 'cli')]
    with contextlib.redirect_stdout(io.StringIO()): assert main(argv) == 0          # `neurofc export` takes it


@pytest.mark.slow
def test_phase2_quick_runs_end_to_end(world, tmp_path):
    "Quick Phase 2 AMAG runs of both monkeys through export, the isolated ingestion and scoring, against evaluate."
    with contextlib.redirect_stdout(io.StringIO()):
        runs = {m: train_seeds(phase_config('compete', m, quick=True, epochs=1, train_limit=32), world.data, [7], tmp_path / 'runs', 'cpu', progress=False)
                for m in ('affi', 'beignet')}
    res = run_ingestion(export_submission(runs, tmp_path / 'sub'), world.data, tmp_path / 'ingest', threads=1)
    _check_isolated(res, tmp_path / 'ingest')
    scores = score_predictions(res['output_dir'], world.data)
    for m, ds in runs.items():
        ev = evaluate(ds, world.data, save=False)
        for name, _ in dict(challenge_test_files(world.data))[m]:
            assert scores[name] == pytest.approx(_mse(ev, 'compete seed7', name), rel=1e-4), name
