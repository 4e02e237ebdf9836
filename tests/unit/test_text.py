from distillery.data.schema import row_problem
from distillery.data.text import to_text, to_texts


def test_to_text_fixed_order_skips_nulls_and_labels():
    row = {"ad_title": "Trail shoes", "query": "running  shoes\n", "id": "7", "click": 1,
           "click_prob": 0.2, "hour": 14.0, "os": None, "zeta": "z", "alpha": 3}
    assert to_text(row) == "query: running shoes | hour: 14 | ad: Trail shoes | alpha=3 | zeta=z"


def test_to_text_is_independent_of_key_order():
    a = {"query": "q", "advertiser": "acme", "x": 1, "b": 2}
    b = dict(reversed(list(a.items())))
    assert to_text(a) == to_text(b)


def test_to_texts_columnar():
    batch = {"query": ["a", "b"], "ad_title": ["t1", None]}
    assert to_texts(batch) == ["query: a | ad: t1", "query: b"]


def test_row_problem_names_the_field():
    ok = {"id": "1", "query": "shoes", "hour": 3}
    assert row_problem(ok) is None
    assert row_problem({"id": "", "query": "x"}).startswith("id:")
    assert row_problem({"id": "1", "query": "x", "hour": "noon"}).startswith("hour:")
    assert row_problem({"id": "1", "query": "x" * 5000}).startswith("query:")
    assert row_problem({"id": "1", "query": b"\xff\xfe"}).startswith("query:")
    assert row_problem({"id": "1", "query": "  "}) == "row has no text fields"
    assert row_problem({"id": "1", "query": "x"}, required=("ad_title",)).startswith("ad_title:")
