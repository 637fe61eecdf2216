"""The README and docs/: every relative link and ``#anchor`` resolves, and
the README stays a front door (at most 250 lines)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / 'README.md', ROOT / 'CHANGELOG.md'] + sorted(
    (ROOT / 'docs').glob('*.md'))
LINK = re.compile(r'(?<!!)\[[^\]]*\]\(([^)\s]+)\)')


def anchors(text):
    """The anchors GitHub gives a page's headings (lower case, punctuation
    dropped, spaces as hyphens, repeats numbered)."""
    found, seen = set(), {}
    in_code = False
    for line in text.splitlines():
        if line.startswith('```'):
            in_code = not in_code
        if in_code or not line.startswith('#'):
            continue
        title = line.lstrip('#').strip().replace('`', '').lower()
        slug = re.sub(r'[^\w\- ]', '', title).replace(' ', '-')
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f'{slug}-{count}')
    return found


def links(text):
    """The link targets outside code blocks and code spans."""
    text = re.sub(r'```.*?```', '', text, flags=re.S)
    text = re.sub(r'`[^`\n]*`', '', text)
    return LINK.findall(text)


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page.read_text()):
        if re.match(r'[a-z]+:', target):  # http(s):, mailto:
            continue
        path, _, anchor = target.partition('#')
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f'{target}: no {file}')
        elif anchor and file.suffix == '.md' and \
                anchor not in anchors(file.read_text()):
            broken.append(f'{target}: no heading #{anchor} in {file.name}')
    assert not broken, broken


def test_anchors_follow_github():
    text = '# A `b` page\n## Tables 3 and 4, paper vs ours\n## Same\n## Same\n'
    assert anchors(text) == {'a-b-page', 'tables-3-and-4-paper-vs-ours',
                             'same', 'same-1'}
    assert links('[x](a.md#b) `[y](c.md)` ![img](p.png)') == ['a.md#b']


def test_the_readme_is_a_front_door():
    readme = (ROOT / 'README.md').read_text()
    assert len(readme.splitlines()) <= 250
    assert 'make test' in readme and 'make run' in readme
    for page in (ROOT / 'docs').glob('*.md'):
        assert f'docs/{page.name}' in readme, f'README does not link {page}'
