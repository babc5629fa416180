"""Unit tests of the SDK's pure parts, run on the build machine's CPython.

``build.sh test`` runs them with the generated bindings on the path (they
are importable stubs outside a component).
"""

import json
import unittest
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from wrun_sdk import _actions, _prepare
from wrun_sdk.errors import Error, HTTPError, InvalidInput
from wrun_sdk.http import Headers, Response


def prepared(method="GET", url="https://h/", headers=(), params=None, data=None,
             json_body=_prepare._EMPTY, auth=()):
    return _prepare.prepare(
        method, url, list(headers), _prepare.pairs(params, "params"),
        _prepare.make_body(data, json_body), list(auth),
    )


def header(p, name):
    return next((v for k, v in p.headers if k.lower() == name.lower()), None)


class UrlTests(unittest.TestCase):
    def test_splits_urls(self):
        cases = [
            ("https://example.com", "https", "example.com", "/", "/"),
            ("https://example.com:8443/a/b?c=d&e", "https", "example.com:8443", "/a/b", "/a/b?c=d&e"),
            ("https://example.com?x=1", "https", "example.com", "/", "/?x=1"),
            ("http://[::1]:80/p", "http", "[::1]:80", "/p", "/p"),
        ]
        for url, scheme, authority, path, pq in cases:
            parts = _prepare.split_url(url)
            self.assertEqual((parts.scheme, parts.authority, parts.path, parts.path_with_query),
                             (scheme, authority, path, pq), url)
        for bad in ["example.com/x", "https:///x", "://x", "1x://h/", "https://h/a b"]:
            with self.assertRaises(Error, msg=bad):
                _prepare.split_url(bad)

    def test_forms_and_params(self):
        fields = [("grant_type", "client_credentials"), ("scope", "read write/all&more=é"), ("a[b] c", "[x]")]
        self.assertEqual(
            _prepare.encode_form(fields),
            "grant_type=client_credentials&scope=read+write%2Fall%26more%3D%C3%A9&a[b]+c=%5Bx%5D",
        )
        p = prepared(url="https://h/p?a=1#frag", params={"b": "2 3"})
        self.assertEqual(p.path_with_query, "/p?a=1&b=2+3")
        self.assertEqual(p.display_url, "https://h/p")


class PlacementTests(unittest.TestCase):
    def test_parses(self):
        self.assertEqual(_prepare.parse_placement("header:Authorization=Bearer {}"),
                         _prepare.Placement("header", "Authorization", "Bearer {}"))
        self.assertEqual(_prepare.parse_placement("header:X-Api-Key"), _prepare.Placement("header", "X-Api-Key", "{}"))
        self.assertEqual(_prepare.parse_placement("basic").kind, "basic")
        self.assertEqual(_prepare.parse_placement("query:api_key"), _prepare.Placement("query", "api_key"))
        self.assertEqual(_prepare.parse_placement("body:client_secret"), _prepare.Placement("body", "client_secret"))
        for bad in ["", "header:", "header:X=no-slot", "header:=Bearer {}", "query:", "path:x", "cookie:a"]:
            with self.assertRaises(Error, msg=bad):
                _prepare.parse_placement(bad)

    def test_header_replaces_existing(self):
        p = prepared(headers=[("authorization", "old")], auth=[("header:Authorization=Bearer {}", "PH")])
        self.assertEqual(p.headers, [("Authorization", "Bearer PH")])
        self.assertIsNone(p.body)

    def test_basic_and_query(self):
        self.assertEqual(header(prepared(auth=[("basic", "PH")]), "authorization"), "Basic PH")
        p = prepared(url="https://h/p?a=1#f", auth=[("query:api_key", "PH")])
        self.assertEqual(p.path_with_query, "/p?a=1&api_key=PH")
        self.assertEqual(prepared(url="https://h", auth=[("query:k", "PH")]).path_with_query, "/?k=PH")

    def test_body_fields(self):
        p = prepared("POST", data=[("client_id", "abc"), ("client_secret", "stale")],
                     auth=[("body:client_secret", "PH")])
        self.assertEqual(p.body, b"client_id=abc&client_secret=PH")
        self.assertEqual(header(p, "content-type"), "application/x-www-form-urlencoded")
        self.assertEqual(header(p, "content-length"), "30")
        p = prepared("POST", json_body={"id": 1}, auth=[("body:secret", "PH")])
        self.assertEqual(json.loads(p.body), {"id": 1, "secret": "PH"})
        self.assertEqual(header(p, "content-type"), "application/json")
        with self.assertRaisesRegex(Error, "needs a json= or a form data= body"):
            prepared("POST", auth=[("body:secret", "PH")])
        with self.assertRaisesRegex(Error, "JSON object"):
            prepared("POST", json_body=[1, 2], auth=[("body:secret", "PH")])

    def test_keeps_content_type_and_refuses_both_bodies(self):
        p = prepared("POST", headers=[("Content-Type", "application/vnd.api+json")], json_body={})
        self.assertEqual([v for k, v in p.headers if k.lower() == "content-type"], ["application/vnd.api+json"])
        with self.assertRaises(Error):
            prepared("POST", data="x", json_body={})


class ResponseTests(unittest.TestCase):
    def test_raise_for_status(self):
        r = Response(404, Headers([]), b'  {"message":"Not Found"}\n', "https://h/x")
        with self.assertRaises(HTTPError) as caught:
            r.raise_for_status()
        self.assertEqual(str(caught.exception), 'HTTP 404 from https://h/x: {"message":"Not Found"}')
        self.assertEqual(caught.exception.status, 404)
        long = Response(500, Headers([]), b"x" * 1000, "https://h/")
        with self.assertRaisesRegex(HTTPError, r"\.\.\.$"):
            long.raise_for_status()
        ok = Response(302, Headers([("location", "/y"), ("Set-Cookie", "a"), ("set-cookie", "b")]), b"", "https://h/")
        self.assertIs(ok.raise_for_status(), ok)
        self.assertEqual(ok.headers["Location"], "/y")
        self.assertEqual(ok.headers.get_all("SET-COOKIE"), ["a", "b"])
        self.assertNotIn("x", ok.headers)

    def test_json_and_text(self):
        r = Response(200, Headers([]), '{"a": "é"}'.encode(), "https://h/")
        self.assertEqual(r.json(), {"a": "é"})
        self.assertEqual(Response(200, Headers([]), b"\xff", "u").text, "\ufffd")
        with self.assertRaisesRegex(Error, "JSON error"):
            Response(200, Headers([]), b"nope", "https://h/").json()


@dataclass
class Inner:
    name: str


@dataclass
class Outer:
    url: str
    count: int = 1
    headers: List[Tuple[str, str]] = field(default_factory=list)
    inner: Optional[Inner] = None
    note: Optional[str] = None


class ActionTests(unittest.TestCase):
    def test_converts_dataclasses(self):
        value = _actions._convert(
            {"url": "u", "headers": [["a", "b"]], "inner": {"name": "n"}, "extra": 1}, Outer, "input"
        )
        self.assertEqual(value, Outer("u", 1, [("a", "b")], Inner("n"), None))
        for bad, message in [
            ({}, "missing field `url`"),
            ({"url": 1}, "input.url: expected a string"),
            ({"url": "u", "count": True}, "input.count: expected an integer"),
            ({"url": "u", "headers": [["a"]]}, r"input.headers\[0\]: expected an array of 2"),
            ([], "expected an object"),
        ]:
            with self.assertRaisesRegex(InvalidInput, message):
                _actions._convert(bad, Outer, "input")

    def test_run_maps_errors(self):
        @_actions.action("test-echo", input=Inner)
        def echo(data):
            if data.name == "fail":
                raise Error("it failed")
            if data.name == "crash":
                raise KeyError("k")
            return data

        self.assertIn("test-echo", _actions.names())
        self.assertEqual(_actions.run("test-echo", '{"name": "x"}'), '{"name":"x"}')
        with self.assertRaisesRegex(InvalidInput, "not JSON"):
            _actions.run("test-echo", "{")
        with self.assertRaisesRegex(InvalidInput, "missing field"):
            _actions.run("test-echo", "{}")
        with self.assertRaisesRegex(Error, "^it failed$"):
            _actions.run("test-echo", '{"name": "fail"}')
        with self.assertRaisesRegex(Error, "^KeyError: 'k'$"):
            _actions.run("test-echo", '{"name": "crash"}')
        with self.assertRaises(ValueError):
            _actions.action("test-echo")(echo)


if __name__ == "__main__":
    unittest.main()
