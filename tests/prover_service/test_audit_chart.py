"""The audit page's noise-stability fit (prover_service.audit_page), without a browser: its
linear part is the certificate's point estimate (no corruption allowance: m* = 0), on both
challenge layouts; its points are the levels' mean pair products; the chart is valid SVG with a
dot per level, the fitted curve and labelled axes. Fixed seeds."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from protocol.certificate import certify
from protocol.residual import linear_weights
from protocol.sampling import ChallengeDesign, SharedBaseDesign
from prover_service.audit_page import stability_chart, stability_fit

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("layout", [ChallengeDesign, SharedBaseDesign])
def test_the_fit_is_the_certificates_point_estimate(layout: type) -> None:
    design = layout.saunshi(bytes(32), 20, 0.5, 0.2, 40)
    rng = np.random.default_rng(3)
    values = rng.uniform(-1, 1, (len(design), 2))
    predictions = 0.5 * values + rng.normal(0, 0.1, values.shape)
    fit = stability_fit(values, predictions, design)
    cert = certify(values, predictions, design, delta=0.05, bound=1.0)  # trusted: m* = 0
    assert fit.rhos == (0.0, 0.2, 0.4) and fit.of == "r = f - g"
    assert math.isclose(fit.linear_part, cert.point, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(fit.linear_part, float(linear_weights(np.array(fit.rhos)) @ fit.h),
                        rel_tol=1e-9, abs_tol=1e-12)  # fmt: skip
    for rho, h in zip(fit.rhos, fit.h, strict=True):  # three points: the quadratic interpolates
        assert math.isclose(fit.at(rho), h, rel_tol=1e-9, abs_tol=1e-12)
    r = values - predictions
    assert math.isclose(fit.h1, float(np.mean(r * r)), rel_tol=1e-12)


def test_pair_layout_points_are_the_level_means_of_the_products() -> None:
    design = ChallengeDesign.saunshi(bytes(range(32)), 20, 0.5, 0.25, 30)
    values = np.random.default_rng(5).uniform(-1, 1, (len(design), 3))
    fit = stability_fit(values, None, design)  # the residual estimator: f itself, NNLS
    prod = (values[0::2] * values[1::2]).mean(axis=1).reshape(3, 30)
    assert np.allclose(fit.h, prod.mean(axis=1), rtol=1e-12, atol=0)
    assert np.allclose(fit.se, prod.std(axis=1, ddof=1) / math.sqrt(30), rtol=1e-12, atol=0)
    assert fit.of == "f" and min(fit.coef) >= 0.0


def test_the_chart_is_svg_with_a_dot_per_level_the_curve_and_axis_labels() -> None:
    design = SharedBaseDesign.saunshi(bytes(32), 20, 0.5, 0.2, 25)
    values = np.random.default_rng(7).uniform(-1, 1, (len(design), 2))
    svg = ET.fromstring(stability_chart(stability_fit(values, 0.3 * values, design)))
    assert "stability" in svg.get("class", "")
    dots = [c for c in svg.iter(f"{SVG}circle") if c.get("class") == "level"]
    assert len(dots) == 3
    curves = [p for p in svg.iter(f"{SVG}polyline") if "fit" in p.get("class", "")]
    assert curves and all(len(p.get("points", "").split()) > 2 for p in curves)
    labels = {t.get("class"): "".join(t.itertext()) for t in svg.iter(f"{SVG}text")
              if "axis-label" in t.get("class", "")}  # fmt: skip
    assert "\u03c1" in labels["axis-label x"] and "h(\u03c1)" in labels["axis-label y"]
    top, bottom = 14, 280 - 48  # every dot lies inside the plot area
    assert all(top <= float(c.get("cy", "nan")) <= bottom for c in dots)
