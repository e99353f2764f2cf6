"""Untrusted text → sanitised HTML: XSS payloads come out inert, markdown stays readable."""
from html.parser import HTMLParser

import pytest

from annotation.rendering import render_inline_excerpt, render_markdown, render_messages, sanitize_html

PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    '<a href="javascript:alert(1)">click</a>',
    "</script><script>alert(1)</script>",
    '<div hx-get="/x" hx-trigger="load">bait</div>',
    '<span data-hx-post="/x" data-hx-trigger="load">bait</span>',
    "<iframe src=//evil.example></iframe>",
    "<style>body{display:none}</style>",
    "<svg onload=alert(1)>",
    '<a href="https://ok.example" onclick="alert(1)">ok</a>',
]


class _Elements(HTMLParser):
    """Collects the elements and attributes a browser would build from the HTML (text is not markup)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs.extend((name, value or "") for name, value in attrs)


SAFE_TAGS = {"p", "a", "span", "strong", "em", "code", "pre", "br"}


def assert_inert(html: str) -> None:
    parsed = _Elements(html)
    assert parsed.tags <= SAFE_TAGS, html
    for name, value in parsed.attrs:
        assert name in {"href", "rel", "title", "class"}, html
        assert not name.startswith(("on", "hx-", "data-")), html
        if name == "href":
            assert value.startswith(("https:", "http:", "mailto:")), html


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payloads_render_as_inert_text(payload):
    assert_inert(str(render_markdown(payload)))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_sanitizer_alone_strips_active_markup(payload):
    """Defence in depth: even raw HTML that bypassed markdown escaping is cleaned by nh3."""
    assert_inert(sanitize_html(payload))


def test_raw_html_is_shown_as_text_not_dropped():
    html = str(render_markdown("<b>bold?</b> <script>alert(1)</script>"))
    assert "&lt;b&gt;bold?&lt;/b&gt;" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_markdown_and_fenced_code_are_readable():
    html = str(render_markdown("# Title\n\n**bold** and `x`\n\n```python\nif a < b:\n    print('<b>')\n```"))
    assert "<h1>Title</h1>" in html
    assert "<strong>bold</strong>" in html
    assert '<pre><code class="language-python">' in html
    assert "if a &lt; b:" in html and "&lt;b&gt;" in html


def test_links_keep_safe_schemes_with_rel():
    html = str(render_markdown("[a](https://example.org) [m](mailto:x@example.org) [d](data:text/html,hi)"))
    assert 'href="https://example.org"' in html and 'href="mailto:x@example.org"' in html
    assert "data:" not in html
    assert html.count('rel="noopener noreferrer nofollow"') == 3


def test_only_language_classes_survive_on_code():
    html = sanitize_html('<code class="language-js evil">x</code><p class="x">y</p>')
    assert html == '<code class="language-js">x</code><p>y</p>'


def test_messages_render_per_turn_and_tolerate_bad_shapes():
    turns = render_messages([{"role": "user", "content": "<script>x</script>hi"}, "junk", {"content": "**b**"}])
    assert [t["role"] for t in turns] == ["user", "user"]
    assert "&lt;script&gt;" in str(turns[0]["html"])
    assert "<strong>b</strong>" in str(turns[1]["html"])


def test_empty_and_huge_inputs():
    assert str(render_markdown("")) == ""
    assert str(render_markdown(None)) == ""
    assert "truncated" in str(render_markdown("x" * 300_000))


def test_chip_excerpts_render_inline_markdown_as_one_line():
    assert str(render_inline_excerpt("Use `numbers.reverse()` to *reverse* it")) == (
        "Use <code>numbers.reverse()</code> to <em>reverse</em> it")
    assert str(render_inline_excerpt("*bonjour*")) == "<em>bonjour</em>"
    listed = str(render_inline_excerpt("# Title\n\n- one\n- **two**\n\n```python\nprint('hi')\n```"))
    assert listed == "Title one <strong>two</strong> <code>print('hi')</code>"  # blocks gone, words kept apart
    assert str(render_inline_excerpt("[a link](https://example.com) <b>raw</b>")) == "a link &lt;b&gt;raw&lt;/b&gt;"
    assert len(str(render_inline_excerpt("word " * 500))) < 300  # only the start is rendered
    cut = str(render_inline_excerpt("Code:\n\n```python\nprint('" + "x" * 300 + "')\n```"))
    assert cut.startswith("Code: <code>print(") and "```" not in cut  # a fence cut off is still code
    assert str(render_inline_excerpt("")) == ""


@pytest.mark.parametrize("payload", PAYLOADS)
def test_chip_excerpts_stay_inert(payload):
    html = str(render_inline_excerpt(payload))
    assert _Elements(html).tags <= {"code", "em", "strong"} and not _Elements(html).attrs, html
