"The phase report renders to HTML with its figures and opens in headless Chromium (`.ci/run` installs Debian's chromium)."
import os, re, shutil, subprocess, tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync']


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    from neurofc.fixtures import quick_runs
    from neurofc.demo import render_report
    tmp = tmp_path_factory.mktemp('report')
    from neurofc.fixtures import synthetic_dir
    from neurofc.train import final_config, train_seeds
    dirs = quick_runs('beignet', tmp / 'runs') + quick_runs('beignet', tmp / 'runs', models=('paper',), seeds=(1,))
    compete = next(d for d in dirs if d.name == 'beignet-compete-seed0')   # and its final fit: no validation score
    dirs += train_seeds(final_config(compete), synthetic_dir('beignet'), 0, tmp / 'runs', 'cpu', progress=False)
    return render_report('beignet', dirs, out=tmp / 'beignet-phases')


def test_report_html(report):
    html = report.read_text()
    assert 'SYNTHETIC data' in html                                   # the banner
    assert len(re.findall(r'<img[^>]*src="data:image/png;base64', html)) >= 5   # figures embedded
    for model in ['persistence seed0', 'ridge seed0', 'paper seed0', 'compete seed0', 'oracle']:
        assert model in html
    text = re.sub(r'<style.*?</style>|<script.*?</script>', '', html, flags=re.S)
    assert 'Traceback' not in text and not re.search(r'\w+Error:', text)
    assert 'def ' not in text and 'import ' not in text                  # rendered without code
    # a model with two seeds is summarised by their ensemble, never by the seed that scored best on the test files
    assert 'Phase 1</strong> (<code>paper (2 seeds)</code>)' in html
    # a final fit is listed, marked, and never chosen (it has no validation score)
    assert 'compete-final seed0' in html and 'Phase 2</strong> (<code>compete seed0</code>)' in html
    assert 'Final fits (<code>compete-final</code>): trained on every training trial' in html


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get('NEUROFC_REQUIRE_BROWSER'),
                    reason='needs Debian chromium (apt-get install chromium)')
def test_report_in_browser(report, tmp_path):
    assert CHROMIUM, 'Chromium is required here (NEUROFC_REQUIRE_BROWSER is set) but neither chromium nor chromium-browser is installed'
    profile = tmp_path / 'profile'
    dom = subprocess.run([CHROMIUM, *FLAGS, f'--user-data-dir={profile}', '--dump-dom', report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('<img') >= 5 and 'SYNTHETIC data' in dom.stdout
    shot = tmp_path / 'report.png'
    r = subprocess.run([CHROMIUM, *FLAGS, f'--user-data-dir={profile}', '--window-size=1280,2400', f'--screenshot={shot}', report.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists() and shot.stat().st_size > 50_000, r.stderr[-2000:]
