"""A catalogue of bad inputs, each through an entry point a user touches (loaders, `train_seeds`, the
papermill workflow, the CLI, `evaluate`, `export_submission`, `run_ingestion`, `Model.predict`): every one
fails early with a message naming the file or parameter, what was expected and what was found, and no run,
report or user file changes. Corrupt input at prediction is repaired (exported `Model`), reported on stderr."""

import contextlib, hashlib, io, json, os, shutil, subprocess, sys, types
from pathlib import Path

import numpy as np
import pytest
import torch

from neurofc.adaptation import parse as adaptation_parse
from neurofc.cli import main
from neurofc.config import phase_config
from neurofc.data import get_monkey, load_monkey, load_npz, mask_future, save_npz, session_path
from neurofc.evaluate import evaluate
from neurofc.fixtures import synthetic_dir, tiny_config
from neurofc.infer import Model
from neurofc.submission import export_submission, run_ingestion
from neurofc.runs import load_run
from neurofc.stitch import StitchedAMAG
from neurofc.train import train_seeds

ROOT = Path(__file__).resolve().parents[1]
MAIN, P1 = 'train_data_beignet.npz', 'train_data_beignet_2022-06-01_private.npz'


def _state(*roots) -> dict:
    "Every file under `roots` with its bytes' SHA-256 and mode."
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
        for r in roots
        for p in sorted(Path(r).rglob('*'))
        if p.is_file()
    }


@pytest.fixture(scope='module')
def w(tmp_path_factory):
    "A copy of the synthetic beignet tree, a finished persistence run on it, its submission, a user's file."
    root = tmp_path_factory.mktemp('bad')
    data = root / 'data'
    shutil.copytree(synthetic_dir('beignet'), data)
    with contextlib.redirect_stdout(io.StringIO()):
        runs = train_seeds(
            tiny_config(model='persistence', epochs=1, train_limit=8),
            data,
            0,
            root / 'runs',
            'cpu',
            progress=False,
        )
        export_submission({'beignet': runs}, root / 'subs' / 'sub', verify=False)
    (root / 'user').mkdir()
    (root / 'user' / 'notes.md').write_text('my notes')
    return types.SimpleNamespace(root=root, data=data, run=runs[0], sub=root / 'subs' / 'sub')


def _tree(w, name: str) -> Path:
    "A private copy of the synthetic training files to damage."
    d = w.root / 'trees' / name
    if not d.exists():
        (d / 'train').mkdir(parents=True)
        for p in (w.data / 'train').iterdir():
            shutil.copy(p, d / 'train' / p.name)
    return d


def _write(w, name: str, fname: str, content) -> Path:
    d = _tree(w, name)
    p = d / 'train' / fname
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif callable(content):
        content(p)
    else:
        save_npz(p, content)
    return d


def _x(w, n=6, fname=MAIN):
    return load_npz(w.data / 'train' / fname)[:n]


def _train(w, data_dir, **kw):
    cfg = tiny_config(model='persistence', **{'epochs': 1, 'train_limit': 8, **kw.pop('cfg', {})})
    with contextlib.redirect_stdout(io.StringIO()):
        return train_seeds(
            cfg,
            data_dir,
            kw.pop('seeds', 0),
            kw.pop('runs_dir', w.root / 'runs'),
            'cpu',
            progress=False,
            **kw,
        )


def _cli(*argv):
    "Run `neurofc ARGV`; a non-zero exit becomes an error carrying what it printed on stderr."
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        rc = main([str(a) for a in argv])
    if rc:
        raise RuntimeError(err.getvalue())


def _papermill(w, *params):
    "Run nbs/train.ipynb with papermill; a failure becomes an error carrying its stderr."
    out = w.root / 'pm'
    out.mkdir(exist_ok=True)
    args = [
        sys.executable,
        '-m',
        'papermill',
        str(ROOT / 'nbs' / 'train.ipynb'),
        str(out / 'train.ipynb'),
        '-k',
        'python3',
        '-p',
        'data_dir',
        str(w.data),
        '-p',
        'runs_dir',
        str(w.root / 'runs'),
        '-p',
        'quick',
        'True',
        *params,
    ]
    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, 'IN_TEST': ''})
    if r.returncode:
        raise RuntimeError(r.stderr[-6000:])


def _copy_run(w, name: str, unfinish: bool = False) -> Path:
    "A copy of the finished run, optionally turned back into an unfinished one (no seal, no metrics)."
    d = w.root / 'runcopies' / name / w.run.name
    shutil.copytree(w.run, d)
    for p in d.iterdir():
        p.chmod(0o644)
    if unfinish:
        (d / 'seal.json').unlink()
        (d / 'metrics.json').unlink()
    return d


def _damage(path: Path, data: bytes = b'not a checkpoint'):
    path.chmod(0o644)
    path.write_bytes(data)


def _model(w, x):
    m = Model('beignet', root=w.sub, device='cpu')
    with contextlib.redirect_stderr(io.StringIO()) as err:
        y = m.predict(x)
    return y, err.getvalue()


def _amag(w, **cfg):
    "Train a tiny AMAG with `cfg` on the data, into a folder of its own (a failed start may leave one there)."
    with contextlib.redirect_stdout(io.StringIO()):
        return train_seeds(tiny_config(**{'epochs': 1, 'train_limit': 8, **cfg}), w.data, 0,
                           w.root / 'phase-runs', 'cpu', progress=False)


def _stitched():
    "A stitched model that knows one array, beignet's 89 channels."
    return StitchedAMAG({'beignet': 89}, n_features=9, latents=4, hidden=8, heads=2, d_ff=16)


def _foreign(w) -> Path:
    "A checkpoint file whose one tensor matches no AMAG's."
    p = w.root / 'ckpt' / 'foreign.pt'
    p.parent.mkdir(exist_ok=True)
    torch.save({'encoder.conv.weight': torch.zeros(3, 3)}, p)
    return p


def _adaptation(*argv):
    "Run `python -m neurofc.adaptation ARGV`'s argument check; its error (exit 2) carries what it printed."
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            adaptation_parse([str(a) for a in argv])
        except SystemExit as e:
            raise RuntimeError(err.getvalue()) from e


def _masked_test(w, n=5):
    return load_npz(session_path(w.data, get_monkey('beignet').main, 'test'))[:n]


# (id, action(w) -> callable, exception type, substrings of its message (or functions of `w` giving them))
CASES = [
    # --- data files, through train_seeds (the function the train workflow calls)
    (
        'truncated-npz',
        lambda w: lambda: _train(w, _write(w, 'trunc', MAIN, (w.data / 'train' / MAIN).read_bytes()[:4000])),
        ValueError,
        [MAIN, 'expected a NumPy .npz archive', 'found a truncated or damaged zip archive (4,000 bytes)'],
    ),
    (
        'random-bytes',
        lambda w: lambda: _train(w, _write(w, 'noise', MAIN, os.urandom(64))),
        ValueError,
        [MAIN, 'expected a NumPy .npz archive', 'found 64 bytes that are not a zip archive'],
    ),
    (
        'empty-file',
        lambda w: lambda: _train(w, _write(w, 'empty', MAIN, b'')),
        ValueError,
        [MAIN, 'expected a NumPy .npz archive', 'found an empty file (0 bytes)'],
    ),
    (
        'npy-named-npz',
        lambda w: lambda: _train(w, _write(w, 'npy', MAIN, lambda p: p.write_bytes(_npy(_x(w))))),
        ValueError,
        [MAIN, 'expected a NumPy .npz archive', 'found a bare .npy array'],
    ),
    (
        'object-array',
        lambda w: (
            lambda: _train(w, _write(w, 'obj', MAIN, lambda p: np.savez(p, np.array([1, None], object))))
        ),
        TypeError,
        [MAIN, 'expected a numeric array, found an object (pickled) array'],
    ),
    (
        'string-array',
        lambda w: lambda: _train(w, _write(w, 'str', MAIN, _x(w).astype(str))),
        TypeError,
        [MAIN, 'expected a numeric array, found dtype <U'],
    ),
    (
        'no-arr_0',
        lambda w: lambda: _train(w, _write(w, 'named', MAIN, lambda p: np.savez(p, x=_x(w)))),
        KeyError,
        [MAIN, "expected an array named 'arr_0', found ['x']"],
    ),
    (
        'zero-trials-day',
        lambda w: lambda: _train(w, _write(w, 'zero', P1, _x(w, 0, P1))),
        ValueError,
        [P1, 'expected at least 1 trial(s) on axis 0, found 0'],
    ),
    (
        'one-trial-day',
        lambda w: lambda: _train(w, _write(w, 'one', P1, _x(w, 1, P1))),
        ValueError,
        [P1, 'a recording day needs at least 2 trials (one to train on, one to validate), found 1'],
    ),
    (
        'wrong-channels',
        lambda w: lambda: _train(w, _write(w, 'chan', MAIN, _x(w)[:, :, :88])),
        ValueError,
        [MAIN, 'expected 89 channels on axis 2, found 88'],
    ),
    (
        'wrong-bins',
        lambda w: lambda: _train(w, _write(w, 'bins', MAIN, _x(w)[:, :19])),
        ValueError,
        [MAIN, 'expected 20 time bins on axis 1, found 19'],
    ),
    (
        'wrong-features',
        lambda w: lambda: _train(w, _write(w, 'feat', MAIN, _x(w)[..., :8])),
        ValueError,
        [MAIN, 'expected 9 features on axis 3, found 8'],
    ),
    (
        'nan-in-training',
        lambda w: lambda: _train(w, _write(w, 'nan', MAIN, _with(_x(w), (2, 3, 4, 0), np.nan))),
        ValueError,
        [MAIN, '1 non-finite values (1 NaN, 0 inf) in 1 trial(s) [2]; first at index (2, 3, 4, 0)'],
    ),
    (
        'inf-in-training',
        lambda w: lambda: _train(w, _write(w, 'inf', MAIN, _with(_x(w), (5, 0, 0, 1), np.inf))),
        ValueError,
        [MAIN, '(0 NaN, 1 inf) in 1 trial(s) [5]'],
    ),
    (
        'masked-as-training',
        lambda w: lambda: _train(w, _write(w, 'masked', MAIN, mask_future(_x(w)))),
        ValueError,
        [MAIN, 'expected train trials with their true bins 10-19, found 6 of 6 trial(s)', 'masked'],
    ),
    (
        'missing-day-file',
        lambda w: lambda: _train(w, _write(w, 'gone', P1, lambda p: p.unlink())),
        FileNotFoundError,
        ["Missing train file for session 'beignet_2022-06-01_private'", P1],
    ),
    (
        'val-frac-zero',
        lambda w: lambda: _train(w, w.data, cfg=dict(val_frac=0.0), runs_dir=w.root / 'r-vf'),
        ValueError,
        [MAIN, 'val_frac=0.0 holds out no trial of its 700: expected at least 1 validation trial', 'found 0'],
    ),
    # --- parameters
    (
        'seeds-text',
        lambda w: lambda: _train(w, w.data, seeds='seven'),
        TypeError,
        ["seeds: expected an int or a non-empty list of distinct ints, found 'seven'"],
    ),
    (
        'seeds-duplicate',
        lambda w: lambda: _train(w, w.data, seeds=[1, 1]),
        TypeError,
        ['seeds: expected an int or a non-empty list of distinct ints, found [1, 1]'],
    ),
    (
        'papermill-seeds',
        lambda w: lambda: _papermill(w, '-p', 'seeds', 'abc'),
        RuntimeError,
        ["seeds: expected an int or a non-empty list of distinct ints, found 'abc'"],
    ),
    (
        'papermill-epochs-0',
        lambda w: lambda: _papermill(w, '-p', 'epochs', '0'),
        RuntimeError,
        ['epochs must be >= 1, found 0'],
    ),
    (
        'papermill-monkey',
        lambda w: lambda: _papermill(w, '-p', 'monkey', 'zebra'),
        RuntimeError,
        ["Unknown monkey 'zebra'; known monkeys: ['affi', 'beignet']"],
    ),
    (
        'papermill-phase',
        lambda w: lambda: _papermill(w, '-p', 'phase', 'final'),
        RuntimeError,
        ["Unknown phase 'final'; known phases: ['paper', 'compete', 'reference', 'transfer']"],
    ),
    (
        'papermill-model',
        lambda w: lambda: _papermill(w, '-p', 'model', 'lstm'),
        RuntimeError,
        ["Unknown model 'lstm'; known models: ['amag', 'gru', 'ridge', 'persistence', 'stitched']"],
    ),
    (
        'papermill-override',
        lambda w: lambda: _papermill(w, '-y', 'overrides: {patience: -1}'),
        RuntimeError,
        ['patience must be >= 0, found -1'],
    ),
    (
        'papermill-data-dir',
        lambda w: lambda: _papermill(w, '-p', 'data_dir', str(w.root / 'user' / 'dta')),
        RuntimeError,
        ['data_dir: expected an existing folder, found none at', 'dta'],
    ),
    (
        'unknown-config-key',
        lambda w: lambda: phase_config('paper', 'beignet', leraning_rate=1e-3),
        KeyError,
        ["Unknown RunConfig key(s) ['leraning_rate'] in overrides"],
    ),
    # --- runs: never written into, never reused on other data or code
    (
        'fresh-into-existing',
        lambda w: lambda: _train(w, w.data),
        FileExistsError,
        [lambda w: w.run.name, 'already exists; pass resume=True'],
    ),
    (
        'resume-finished-other-data',
        lambda w: lambda: _train(w, _write(w, 'other', MAIN, _x(w, 700) * 1.01), resume=True),
        ValueError,
        [
            lambda w: f'Cannot resume {w.run}',
            'trained on other data or code',
            f'{MAIN}: content differs (SHA-256 trained on',
            'Nothing in it was changed',
        ],
    ),
    (
        'resume-new-day',
        lambda w: (
            lambda: _train(
                w, _write(w, 'newday', 'train_data_beignet_2022-06-03.npz', _x(w, 9, P1)), resume=True
            )
        ),
        ValueError,
        [lambda w: f'Cannot resume {w.run}', "(new ['beignet_2022-06-03'])"],
    ),
    (
        'resume-other-config',
        lambda w: lambda: _train(w, w.data, cfg=dict(ridge_alpha=3.0), resume=True),
        ValueError,
        [
            lambda w: f'Cannot resume {w.run}',
            "config differs in {'ridge_alpha': (1.0, 3.0)} (saved, requested)",
        ],
    ),
    (
        'resume-more-epochs',
        lambda w: lambda: _train(w, w.data, cfg=dict(epochs=5), resume=True),
        ValueError,
        [lambda w: str(w.run), 'finished after 1 epochs', 'read-only', 'epochs=5'],
    ),
    (
        'corrupt-last-pt',
        lambda w: (
            lambda: (
                _damage(_copy_run(w, 'lastpt', unfinish=True) / 'last.pt'),
                _train(w, w.data, resume=True, runs_dir=w.root / 'runcopies' / 'lastpt'),
            )
        ),
        RuntimeError,
        [
            'last.pt: expected a PyTorch checkpoint written by neurofc, found an unreadable file '
            '(16 bytes; UnpicklingError): it is damaged'
        ],
    ),
    (
        'corrupt-config',
        lambda w: (
            lambda: (
                _damage(_copy_run(w, 'cfg', unfinish=True) / 'config.json', b'{"lr": '),
                _train(w, w.data, resume=True, runs_dir=w.root / 'runcopies' / 'cfg'),
            )
        ),
        ValueError,
        ['config.json: expected the configuration of a neurofc run, found unreadable text (7 bytes'],
    ),
    (
        'tampered-finished-run',
        lambda w: (
            lambda: (
                _damage(_copy_run(w, 'tamper') / 'best.pt', b'x' * 100),
                evaluate(w.root / 'runcopies' / 'tamper' / w.run.name, w.data, save=False),
            )
        ),
        ValueError,
        ['is a finished run, but its files differ from the seal', 'best.pt: content differs (SHA-256 sealed'],
    ),
    (
        'evaluate-other-data',
        lambda w: lambda: evaluate([w.run], _write(w, 'evother', MAIN, _x(w, 700) + 1), save=False),
        ValueError,
        [lambda w: f'{w.run} was trained on other data than', f'{MAIN}: content differs'],
    ),
    (
        'evaluate-unfinished',
        lambda w: lambda: evaluate([_copy_run(w, 'unf', unfinish=True)], w.data, save=False),
        FileNotFoundError,
        ['expected its metrics.json, found none: it is unfinished or not a run directory'],
    ),
    (
        'evaluate-masked-truth',
        lambda w: lambda: evaluate([w.run], _truth_tree(w, mask=True), save=False),
        ValueError,
        ['test_data_beignet.npz: expected truth trials with their true bins 10-19', 'masked'],
    ),
    (
        'evaluate-missing-truth',
        lambda w: lambda: evaluate([w.run], _truth_tree(w, mask=False), save=False),
        FileNotFoundError,
        ["Missing truth file for session 'beignet'", 'Scoring needs the unmasked test truth'],
    ),
    # --- the command line
    (
        'cli-device',
        lambda w: lambda: _cli('info', '--device', 'tpu'),
        RuntimeError,
        ["Unknown device 'tpu': expected 'auto'"],
    ),
    (
        'cli-demo-monkey',
        lambda w: lambda: _cli('demo', '--monkey', 'zebra', '--runs-dir', w.root / 'demo'),
        RuntimeError,
        ["Unknown monkey 'zebra'; known monkeys"],
    ),
    (
        'cli-export-wrong-monkey',
        lambda w: lambda: _cli('export', '--affi', w.run, '--out', w.root / 'subs' / 'x'),
        RuntimeError,
        ["The runs given for 'affi' are runs of 'beignet'"],
    ),
    (
        'cli-export-existing',
        lambda w: lambda: _cli('export', '--beignet', w.run, '--out', w.sub),
        RuntimeError,
        [lambda w: str(w.sub), 'already exist(s); neurofc never overwrites a submission', '--overwrite'],
    ),
    (
        'cli-export-unsealed',
        lambda w: lambda: _cli('export', '--beignet', _unsealed(w), '--out', w.root / 'subs' / 'y'),
        RuntimeError,
        ['is not a finished run: expected its seal.json, found none'],
    ),
    # --- across days and arrays: adapters, phase transitions, the adaptation benchmark
    (
        'stitched-unregistered-array',
        lambda w: lambda: _stitched()(torch.zeros(2, 20, 239, 9), 'affi'),
        ValueError,
        ["No adapters for array 'affi' (an input of 239 channels): it was never registered; registered arrays: "
         "{'beignet': 89}"],
    ),
    (
        'stitched-wrong-channels',
        lambda w: lambda: _stitched()(torch.zeros(2, 20, 80, 9), 'beignet'),
        ValueError,
        ["Array 'beignet' has 89 channels, the input 80"],
    ),
    (
        'init-from-another-architecture',
        lambda w: lambda: _amag(w, init_from=str(_foreign(w))),
        ValueError,
        ['foreign.pt: a checkpoint of another architecture: none of its 1 tensors matches this AMAG'],
    ),
    (
        'init-from-missing',
        lambda w: lambda: _amag(w, init_from=str(w.root / 'nosuch')),
        FileNotFoundError,
        [lambda w: f"init_from={str(w.root / 'nosuch')!r}: no such run directory or checkpoint file"],
    ),
    (
        'freeze-unknown-part',
        lambda w: lambda: _amag(w, freeze=('nosuch',), freeze_epochs=1),
        ValueError,
        ["freeze: ['nosuch'] is not a part of this AMAG with parameters; its parts: ["],
    ),
    (
        'adaptation-unknown-mode',
        lambda w: lambda: _adaptation('--modes', 'registr', '--out', w.root / 'user'),
        RuntimeError,
        ["--modes: unknown mode 'registr'; known: ['register', 'head', 'all', 'register+head', 'ensemble']"],
    ),
    (
        'adaptation-bad-shots',
        lambda w: lambda: _adaptation('--shots', '0', 'x', '--out', w.root / 'user'),
        RuntimeError,
        ["--shots: expected non-negative ints or 'all', found 'x'"],
    ),
    (
        'adaptation-unknown-phase',
        lambda w: lambda: _adaptation('--phases', 'paper', '--out', w.root / 'user'),
        RuntimeError,
        ["--phases: unknown phase 'paper'; known: ['compete', 'transfer']"],
    ),
    # --- the submission and its ingestion
    (
        'model-channels',
        lambda w: lambda: _model(w, np.zeros((2, 20, 239, 9), np.float32)),
        ValueError,
        ["Model('beignet').predict input: expected 89 channels on axis 2, found 239"],
    ),
    (
        'model-rank',
        lambda w: lambda: _model(w, np.zeros((20, 89, 9), np.float32)),
        ValueError,
        ["Model('beignet').predict input: expected 4 dimensions (N, 20, C, 9), found 3 with shape (20, 89, 9)"],
    ),
    (
        'model-dtype',
        lambda w: lambda: _model(w, np.zeros((2, 20, 89, 9), str)),
        TypeError,
        ['expected a numeric array, found dtype <U'],
    ),
    (
        'model-unknown-monkey',
        lambda w: lambda: Model('zebra', root=w.sub).load(),
        ValueError,
        ["This submission holds no model for monkey 'zebra'; it holds ['beignet']"],
    ),
    (
        'model-no-manifest',
        lambda w: lambda: Model('beignet', root=w.root / 'user').load(),
        FileNotFoundError,
        [lambda w: f"Submission file {w.root / 'user' / 'manifest.json'} is missing"],
    ),
    (
        'model-corrupt-weights',
        lambda w: lambda: Model('beignet', root=_damaged_sub(w)).load(),
        ValueError,
        ['beignet_0_best.pt: expected the weights exported with SHA-256', 'found a file with SHA-256'],
    ),
    (
        'forecaster-nan',
        lambda w: lambda: load_run(w.run).predict(_with(_masked_test(w), (3, 2, 1, 0), np.nan)),
        ValueError,
        ['Forecaster.predict input: 1 non-finite values (1 NaN, 0 inf) in 1 trial(s) [3]'],
    ),
    (
        'ingestion-missing-zip',
        lambda w: lambda: run_ingestion(w.root / 'subs' / 'nosuch.zip', w.data, w.root / 'user' / 'w1'),
        FileNotFoundError,
        ['nosuch.zip: expected a submission zip or folder holding model.py and manifest.json, found nothing'],
    ),
    (
        'ingestion-not-zip',
        lambda w: lambda: run_ingestion(w.root / 'user' / 'notes.md', w.data, w.root / 'user' / 'w2'),
        ValueError,
        [
            'notes.md: expected a submission zip or folder holding model.py and manifest.json, '
            'found a file that is not a zip'
        ],
    ),
    (
        'ingestion-monkey-missing',
        lambda w: lambda: run_ingestion(w.root / 'subs' / 'sub.zip', w.data, w.root / 'user' / 'w3'),
        ValueError,
        [
            "the ingestion asks for ['affi', 'beignet'], the submission holds models for ['beignet'] "
            "(missing ['affi'])"
        ],
    ),
    (
        'export-overwrite-user-file',
        lambda w: (lambda d: lambda: export_submission({'beignet': [w.run]}, d, overwrite=True))(
            _sub_with_note(w)
        ),
        FileExistsError,
        ["holds files that are not part of its submission: ['notes.txt']", 'nothing was deleted'],
    ),
    (
        'ingestion-used-workdir',
        lambda w: (
            lambda: run_ingestion(w.root / 'subs' / 'sub.zip', w.data, _used_work(w), monkeys=('beignet',))
        ),
        FileExistsError,
        [
            'already holds submission from an earlier ingestion run: pass overwrite=True',
            'nothing was deleted',
        ],
    ),
]


def _npy(x) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def _with(x, idx, value):
    x = x.copy()
    x[idx] = value
    return x


def _truth_tree(w, mask: bool) -> Path:
    "The data tree with its main-day truth file masked, or removed."
    d = w.root / 'trees' / f'truth-{mask}'
    shutil.copytree(w.data, d)
    t = d / 'test_truth' / 'test_data_beignet.npz'
    if mask:
        save_npz(t, mask_future(load_npz(t)))
    else:
        t.unlink()
    return d


def _unsealed(w) -> Path:
    d = _copy_run(w, 'unsealed')
    (d / 'seal.json').unlink()
    return d


def _damaged_sub(w) -> Path:
    d = w.root / 'subs' / 'damaged'
    shutil.copytree(w.sub, d)
    (d / 'beignet_0_best.pt').write_bytes(b'\0' * 32)
    return d


def _sub_with_note(w) -> Path:
    "A copy of the submission in the user's folder, with a note of theirs in it."
    d = w.root / 'user' / 'sub'
    if not d.exists():
        shutil.copytree(w.sub, d)
        (d / 'notes.txt').write_text('mine')
    return d


def _used_work(w) -> Path:
    "An ingestion work folder a user already holds a hand-written model.py in."
    d = w.root / 'ingest'
    (d / 'submission').mkdir(parents=True, exist_ok=True)
    (d / 'submission' / 'model.py').write_text('# mine\n')
    return d


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_bad_input(w, case):
    name, action, exc, needles = case
    call = action(w)
    watched = (w.run.parent, w.data, w.sub, w.root / 'user')
    before = _state(*watched)
    with pytest.raises(exc) as e:
        call()
    msg = str(e.value)
    for n in needles:
        n = n(w) if callable(n) else n
        assert n in msg, f"{name}: {n!r} not in:\n{msg}"
    assert _state(*watched) == before, f'{name}: a run, the data, a submission or a user file changed'
    if name == 'ingestion-used-workdir':
        assert (w.root / 'ingest' / 'submission' / 'model.py').read_text() == '# mine\n'
    if name.startswith('ingestion-'):
        assert not any((w.root / 'user' / f'w{i}').exists() for i in (1, 2, 3))  # nothing created


def test_catalogue_size():
    assert len(CASES) >= 30


@pytest.mark.parametrize('value', [np.nan, np.inf, -np.inf])
def test_model_repairs_nonfinite(w, value):
    "The exported Model never returns NaN: it repairs the input by its rule, naming the trials on stderr"
    x = _masked_test(w, 6)
    clean, _ = _model(w, x)
    bad = x.copy()
    bad[4, 9:, 7, 0] = value
    bad[1, :, 2, 0] = value  # bin 9 (and its masked copies); a whole series
    y, err = _model(w, bad)
    assert np.isfinite(y).all() and y.shape == clean.shape
    assert (
        "Model('beignet').predict: 2 trial(s) [1, 4] held non-finite input values "
        "(NaN, ±inf or beyond float32's range), repaired"
        in err
    )
    np.testing.assert_allclose(
        y[4, 10:, 7], x[4, 8, 7, 0], rtol=1e-5
    )  # persistence of the repaired bin 9 = bin 8
    mean = load_run(w.run).stats['beignet'].mean[2, 0]
    np.testing.assert_allclose(y[1, :, 2], mean, rtol=1e-5)  # no finite value: the main day's mean
    np.testing.assert_array_equal(y[[0, 2, 3, 5]], clean[[0, 2, 3, 5]])  # other trials untouched
