"""The API's JSON parser: DRF's, but a body nested too deeply is a 400, never a RecursionError (500)."""
import codecs

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser, get_encoding
from rest_framework.utils import json

from annotation.limits import json_loads_bounded


class BoundedJSONParser(JSONParser):
    """Parses at most ``JSON_MAX_DEPTH`` levels of nesting; deeper is ``ParseError`` naming the limit."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = get_encoding(parser_context or {})  # DRF's: refuses decompressing codecs
        try:
            text = codecs.getreader(encoding)(stream).read()
            parse_constant = json.strict_constant if self.strict else None
            return json_loads_bounded(text, parse_constant=parse_constant)
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
