"""Untrusted text (prompts, responses, guidelines, flags, skip reasons) → sanitised HTML.

Model output and imported data are attacker-controlled. We render markdown (fenced code blocks stay
readable) and then sanitise the HTML with nh3 (ammonia) against a strict allow-list: no scripts, styles,
iframes, images, event handlers, htmx attributes or `javascript:` links survive. Only the sanitised
string is marked safe. Templates wrap the result in an `hx-disable` container as a second line of
defence against htmx processing anything inside.
"""
import re

import markdown
import nh3
from django.utils.safestring import SafeString, mark_safe

# Tags a response may legitimately use in markdown. Images are left out on purpose: they can fire
# requests (tracking pixels, CSRF-by-GET) the moment a labeler opens the page.
ALLOWED_TAGS: set[str] = {
    "p", "br", "hr", "strong", "em", "b", "i", "del", "s", "sub", "sup", "blockquote",
    "code", "pre", "kbd", "samp", "ul", "ol", "li", "dl", "dt", "dd",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "span",
    "table", "thead", "tbody", "tr", "th", "td",
}
# No `class`, `style`, `id`, `on*`, `hx-*` or `data-*`: attributes are allowed one by one.
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href", "title"},
    "code": {"class"},  # "language-python" from fenced code, filtered below
    "th": {"align"},
    "td": {"align"},
    "ol": {"start"},
}
ALLOWED_URL_SCHEMES: set[str] = {"http", "https", "mailto"}
LINK_REL = "noopener noreferrer nofollow"
MAX_RENDER_CHARS = 200_000  # a huge response is cut, not rendered in full: the page must stay usable



class _EscapeRawHtml(markdown.Extension):
    """Show raw HTML in the source as text (what the model wrote) instead of passing it through."""

    def extendMarkdown(self, md: markdown.Markdown) -> None:  # noqa: N802 - Markdown's API name
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")


_MARKDOWN_EXTENSIONS = ["fenced_code", "tables", "sane_lists", "nl2br", _EscapeRawHtml()]


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    """Keep only `language-xyz` classes on <code>; everything else was allowed by name already."""
    if attribute == "class":
        classes = [c for c in value.split() if c.startswith("language-") and c[9:].isalnum()]
        return " ".join(classes) or None
    return value


def sanitize_html(html: str) -> str:
    """Sanitise an HTML fragment against the allow-list (the only way HTML reaches a template)."""
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=_attribute_filter,
        url_schemes=ALLOWED_URL_SCHEMES,
        link_rel=LINK_REL,
        strip_comments=True,
        clean_content_tags={"script", "style"},
    )


def render_markdown(text: str | None) -> SafeString:
    """Markdown → sanitised HTML, marked safe only after sanitising."""
    if not text:
        return mark_safe("")
    if len(text) > MAX_RENDER_CHARS:
        text = text[:MAX_RENDER_CHARS] + "\n\n… (truncated)"
    html = markdown.markdown(text, extensions=_MARKDOWN_EXTENSIONS, output_format="html")
    return mark_safe(sanitize_html(html))  # noqa: S308 - sanitised on the line above


# What a one-line excerpt (a chip on the ranking board) keeps: inline formatting only, no links (a chip is
# dragged and clicked) and no blocks; the text of everything else stays, as text.
INLINE_TAGS: set[str] = {"strong", "em", "b", "i", "del", "s", "sub", "sup", "code", "kbd", "samp"}
_BLOCK_END = re.compile(r"</(p|li|h[1-6]|pre|blockquote|tr|td|th|dt|dd)>|<br\s*/?>|<hr\s*/?>")
EXCERPT_SOURCE_CHARS = 240  # enough for a chip's line; the chip's CSS ends it with an ellipsis


def render_inline_excerpt(text: str | None, *, limit: int = EXCERPT_SOURCE_CHARS) -> SafeString:
    """The start of a Markdown text as one line of sanitised inline HTML: `` `x` `` → <code>x</code>,
    ``*y*`` → <em>y</em>; blocks become spaces, everything not inline is dropped but its text kept."""
    if not text:
        return mark_safe("")
    head = text[:limit]
    if head.count("```") % 2:  # the cut fell inside a fenced block: close it, or the fence shows as text
        head += "\n```"
    html = markdown.markdown(head, extensions=_MARKDOWN_EXTENSIONS, output_format="html")
    html = _BLOCK_END.sub(lambda m: (m.group(0) if m.group(1) else "") + " ", html)  # keep words apart
    clean = nh3.clean(html, tags=INLINE_TAGS, attributes={}, strip_comments=True,
                      clean_content_tags={"script", "style"})
    return mark_safe(" ".join(clean.split()).replace(" </code>", "</code>"))  # noqa: S308 - sanitised above


def render_messages(messages: list[dict] | None) -> list[dict]:
    """A prompt conversation as [{role, html}], one turn each; unknown roles are shown as text."""
    turns = []
    for message in messages or []:
        if not isinstance(message, dict):
            continue
        role = str(message.get("role", "user"))[:32]
        turns.append({"role": role, "html": render_markdown(str(message.get("content", "")))})
    return turns
