import pytest

from stablemtl.evaluation import build_reference, delta_m, delta_m_table, relative_gains


def test_delta_m_by_hand():
    # depth abs_rel (lower better) 0.10 -> 0.09: +10 %; semantic miou (higher better) 50 -> 55: +10 %.
    ref = {"depth": 0.10, "semantic": 50.0}
    assert delta_m({"depth": 0.09, "semantic": 55.0}, ref) == pytest.approx(10.0)
    # depth 0.12: -20 %; semantic 55: +10 % -> mean -5 %.
    assert delta_m({"depth": 0.12, "semantic": 55.0}, ref) == pytest.approx(-5.0)
    assert relative_gains({"depth": 0.12, "semantic": 55.0}, ref) == pytest.approx(
        {"depth": -20.0, "semantic": 10.0}
    )
    # Only shared tasks count; ``tasks`` restricts further.
    assert delta_m({"depth": 0.12, "normal": 30.0}, ref) == pytest.approx(-20.0)
    assert delta_m({"depth": 0.12, "semantic": 55.0}, ref, tasks=["semantic"]) == pytest.approx(10.0)


def test_delta_m_errors():
    with pytest.raises(ValueError, match="no task in common"):
        delta_m({"normal": 30.0}, {"depth": 0.1})
    with pytest.raises(ValueError, match="non-zero"):
        delta_m({"depth": 0.1}, {"depth": 0.0})
    with pytest.raises(ValueError, match="missing"):
        delta_m({"depth": 0.1}, {"depth": 0.1}, tasks=["semantic"])


def _report(name, values):
    primary = {"depth": "abs_rel", "semantic": "miou", "normal": "mean_angular_error"}
    return {
        "name": name,
        "tasks": {
            t: {"metrics": {primary[t]: v, "other": 1.0}, "primary_metric": primary[t]}
            for t, v in values.items()
        },
    }


def test_reference_prefers_single_task_reports_and_table():
    reports = [
        _report("mtl", {"depth": 0.2, "semantic": 40.0}),
        _report("stl_depth", {"depth": 0.1}),
        _report("stl_semantic", {"semantic": 50.0}),
    ]
    reference = build_reference(reports)
    assert reference == {
        "depth": {"value": 0.1, "metric": "abs_rel", "model": "stl_depth"},
        "semantic": {"value": 50.0, "metric": "miou", "model": "stl_semantic"},
    }
    table = delta_m_table([_report("m", {"depth": 0.05, "semantic": 40.0, "normal": 20.0})], reference)
    assert table["m"]["delta_m"] == pytest.approx((50.0 - 20.0) / 2)
    assert table["m"]["tasks"] == ["depth", "semantic"]
    assert delta_m_table([_report("n", {"normal": 20.0})], reference)["n"]["delta_m"] is None
