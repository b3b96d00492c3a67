"""eval.py --html: the evaluation page, opened in headless Chromium (Debian's `chromium`; .ci/run installs it):
every image loads, the slider and the keys change what is shown, and the page's numbers are eval.py's CSV."""

import contextlib
import csv
import html
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_py
import inference
import report
from outputs import OutputPlan
from conftest import run_process, smooth_photo

CHROMIUM = next((shutil.which(name) for name in ('chromium', 'chromium-browser', 'google-chrome')
                 if shutil.which(name)), None)

# Loads the page in an iframe (same folder: --allow-file-access-from-files lets it look inside), makes every image
# load, moves the first comparison's slider, presses ']' and 'j', and writes what it saw into <pre id="result">.
HARNESS = r'''<!DOCTYPE html><html><body>
<iframe id="page" src="index.html" style="width:1280px;height:900px"></iframe><pre id="result">not run</pre>
<script>
const frame = document.getElementById('page');
frame.addEventListener('load', async () => {
  const doc = frame.contentDocument, win = frame.contentWindow;
  const imgs = [...doc.images];
  const lazy = imgs.filter(img => img.loading === 'lazy').length;
  imgs.forEach(img => { img.addEventListener('error', () => { img.dataset.failed = 1; }); img.loading = 'eager'; });
  const settled = img => img.complete && (img.naturalWidth > 0 || img.dataset.failed);
  for (let i = 0; i < 200 && !imgs.every(settled); i++) await new Promise(done => setTimeout(done, 50));
  const card = doc.querySelector('.card'), slider = card.querySelector('input[type=range]');
  const right = card.querySelector('.compare img.right'), divider = card.querySelector('.divider');
  const shown = () => [win.getComputedStyle(right).clipPath, divider.style.left, right.getAttribute('src')];
  const before = shown();
  slider.value = 20; slider.dispatchEvent(new Event('input'));
  const afterSlider = shown();
  doc.dispatchEvent(new KeyboardEvent('keydown', {key: ']', bubbles: true}));
  const afterKey = shown();
  doc.dispatchEvent(new KeyboardEvent('keydown', {key: 'j', bubbles: true}));
  const current = doc.querySelector('.card.current').dataset.index;
  const numbers = [...doc.querySelectorAll('.numbers')].filter(n => n.dataset.psnr !== '').map(n => ({
    image: n.closest('.card').querySelector('h2').textContent, model: n.dataset.model,
    psnr: +n.dataset.psnr, ssim: +n.dataset.ssim, text: n.textContent}));
  const table = [...doc.querySelectorAll('#results tr')].map(tr => [...tr.cells].map(c => c.textContent));
  document.getElementById('result').textContent = JSON.stringify({
    lazy, widths: imgs.map(img => img.naturalWidth), srcs: imgs.map(img => img.getAttribute('src')),
    before, afterSlider, afterKey, current, numbers, table});
});
</script></body></html>'''


def run_in_chromium(page_folder):
    """Open the harness beside the page in headless Chromium -> what the harness saw (a dict)."""
    if CHROMIUM is None:
        pytest.skip('this test needs Chromium (Debian: apt install chromium; .ci/run installs it)')
    (page_folder / 'harness.html').write_text(HARNESS)
    result = run_process('--headless', '--no-sandbox', '--disable-gpu', '--allow-file-access-from-files',
                         '--virtual-time-budget=30000', '--dump-dom', (page_folder / 'harness.html').as_uri(),
                         program=CHROMIUM, check=False, timeout=120)
    match = re.search(r'<pre id="result">(.*?)</pre>', result.stdout, re.S)
    assert match and match.group(1) != 'not run', result.stderr[-2000:]
    return json.loads(html.unescape(match.group(1)))


@pytest.fixture(scope='module')
def page(tmp_path_factory):
    """eval.py --html on two photos, with the shipped x2 SRResNet (bicubic added by --html), and its --csv."""
    folder = tmp_path_factory.mktemp('page')
    (folder / 'photos').mkdir()
    for i, (w, h) in enumerate([(64, 48), (50, 70)]):
        Image.fromarray(smooth_photo(w, h, i)).save(folder / 'photos' / f'photo{i}.png')
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        eval_py.main([str(inference.shipped_model(2)), '--test-folders', str(folder / 'photos'), '--workers', '0',
                      '--csv', str(folder / 'rows.csv'), '--html', str(folder / 'html'), '--device', 'cpu'])
    assert f'evaluation page: {folder / "html" / "index.html"}' in out.getvalue()
    with open(folder / 'rows.csv') as f:
        return folder / 'html', list(csv.DictReader(f)), out.getvalue()


def test_the_page_works_in_a_real_browser(page):
    folder, rows, printed = page
    seen = run_in_chromium(folder)
    # every image loaded: per photo 2 compared + 3 zooms (bicubic, SRResNet, HR)
    assert len(seen['widths']) == 2 * 5 and all(width > 0 for width in seen['widths']), seen['srcs']
    assert all(not src.startswith(('http:', 'https:', '//')) for src in seen['srcs'])  # nothing from the network
    # the slider moves the divider and what is shown of the right-hand image; ']' changes that image; 'j' moves on
    assert seen['before'][0] != seen['afterSlider'][0] and '20%' in seen['afterSlider'][0]
    assert seen['before'][1] != seen['afterSlider'][1]
    assert seen['afterKey'][2] != seen['afterSlider'][2]
    assert seen['current'] == '1'
    # the page's numbers are eval.py's, image by image and model by model
    assert len(seen['numbers']) == len(rows) == 4
    for row in rows:
        (shown,) = [n for n in seen['numbers'] if f'/ {row["image"]} ' in n['image'] and n['model'] == row['model']]
        assert shown['psnr'] == pytest.approx(float(row['psnr']), abs=1e-9)
        assert shown['ssim'] == pytest.approx(float(row['ssim']), abs=1e-9)
        assert shown['text'] == f'{float(row["psnr"]):.2f} / {float(row["ssim"]):.4f}'
    # and its table is the one eval.py printed
    printed_rows = [[c.strip() for c in line.strip('|').split('|')] for line in printed.splitlines()
                    if line.startswith('| ')]
    assert seen['table'] == [[c.strip('*') for c in row] for row in printed_rows]


def test_the_page_is_self_contained(page):
    folder, _, _ = page
    text = (folder / 'index.html').read_text()
    assert not re.search(r'(src|href)=["\']?(https?:)?//', text) and '@import' not in text
    images = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S).group(1))
    for image in images:
        for src in [image['hr']] + [panel['src'] for panel in image['panels']]:
            with Image.open(folder / src) as img:
                assert img.size == (image['width'], image['height'])


def test_the_default_zoom_is_the_most_detailed_region():
    hr = torch.full((3, 60, 80), 128, dtype=torch.uint8)
    hr[:, 30:45, 50:65] = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 15, 15), dtype=np.uint8))
    left, top = report.most_detailed_region(hr, 15)
    assert (left, top) == (50, 30)


def test_a_page_of_bsd100s_size_loads_its_images_lazily(tmp_path):
    """100 images x (4 models + HR), 500 files: every <img> is loading=lazy (fetched as it nears the view; headless
    Chromium does not defer them, so that part is the browser's), and every one loads."""
    page = report.EvalPage(tmp_path, OutputPlan())
    models = ['bicubic', 'a.pt', 'b.pt', 'c.pt']
    page.plan_images(('BSD100', f'{i:03d}', 4, models) for i in range(100))
    rng = torch.Generator().manual_seed(0)
    rows = []
    for i in range(100):
        hr = torch.randint(0, 256, (3, 24, 32), dtype=torch.uint8, generator=rng)
        for j, model in enumerate(models):
            rows.append({'dataset': 'BSD100', 'image': f'{i:03d}', 'scale': 4, 'model': model,
                         'kind': 'bicubic' if j == 0 else 'srresnet', 'psnr': 20.0 + j, 'ssim': 0.5})
            page.add(rows[-1], torch.rand(3, 24, 32) * 2 - 1, hr)
    page.write('BSD100', ['a note'], '| model | BSD100 PSNR / SSIM |\n|---|---|\n| bicubic | 20.00 / 0.5000 |', rows)
    seen = run_in_chromium(tmp_path)
    assert len(seen['widths']) == 100 * (2 + 5) and all(width == 32 for width in seen['widths'])
    assert seen['lazy'] == 700


def test_a_flat_image_of_infinite_psnr_keeps_the_page_working(tmp_path):
    """A flat image: bicubic gives the HR back, inf dB. JSON has no Infinity: written as such, JSON.parse failed and
    the page showed no image at all."""
    page = report.EvalPage(tmp_path, OutputPlan())
    page.plan_images([('flat', 'grey', 2, ['bicubic'])])
    hr = torch.full((3, 20, 24), 128, dtype=torch.uint8)
    row = {'dataset': 'flat', 'image': 'grey', 'scale': 2, 'model': 'bicubic', 'kind': 'bicubic',
           'psnr': float('inf'), 'ssim': 1.0}
    page.add(row, hr.float() / 127.5 - 1, hr)
    page.write('flat', [], '| model | flat PSNR / SSIM |\n|---|---|\n| bicubic | inf / 1.0000 |', [row])
    text = (tmp_path / 'index.html').read_text()
    data = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S).group(1)
    json.loads(data, parse_constant=lambda name: pytest.fail(f'{name} is not JSON'))  # as strict as JSON.parse
    seen = run_in_chromium(tmp_path)
    assert [n['text'] for n in seen['numbers']] == ['inf / 1.0000']
