"""The method registry is the one table the CLI, the report and ``attribute`` read; old names
keep working for a release with a warning."""

import functools

import jax
import numpy as np
import pytest

import jaxplain
from jaxplain import attribution, cli, report
from jaxplain.attribution import registry


def test_every_registered_method_is_public_and_described():
  for name in registry.names():
    m = registry.get(name)
    assert m.kind in registry.KINDS and m.label
    assert getattr(jaxplain, m.fn.__name__) is m.fn, name  # exported at the top level
    assert m.fn.__name__ in jaxplain.__all__
    assert (m.fn.__doc__ or "").strip(), name
  # the aliases the CLI has always taken
  assert registry.get("ig").name == "integrated_gradients"
  assert registry.get("gradcam").name == "grad_cam"
  assert registry.get("guided").name == "guided_backprop"


def test_all_lists_exactly_the_public_names():
  for module in (jaxplain, attribution):
    for name in module.__all__:
      assert hasattr(module, name), (module.__name__, name)
    public = {n for n, v in vars(module).items() if not n.startswith("_")
              and getattr(v, "__module__", "").startswith("jaxplain") and callable(v)}
    assert public <= set(module.__all__) | {"annotations"}, public - set(module.__all__)


def test_cli_and_report_read_the_registry():
  explain = next(a for a in cli.parser()._subparsers._group_actions[0].choices["explain"]._actions
                 if a.dest == "method")
  assert set(registry.names()) <= set(explain.choices)
  for name in report.ReportConfig.methods:
    registry.get(name)


def test_one_default_layer_for_every_layer_method(tiny_classifier):
  assert registry.default_layer(tiny_classifier) == report.last_spatial_layer(tiny_classifier)
  shipped = jaxplain.load_classifier(jaxplain.shipped_checkpoint())
  assert registry.default_layer(shipped) == "conv4_2"  # 6x6, as the report has always used
  assert attribution.explain.default_cam_layer(shipped) == "conv4_2"


def test_attribute_fills_registered_defaults_and_rejects_unknown_options(tiny_classifier, faces):
  x = jaxplain.data.to_float(faces.images[:2])
  t = faces.labels[:2]
  got = attribution.attribute(tiny_classifier, x, t, method="occlusion")
  want = jaxplain.occlusion(tiny_classifier.forward, x, t, window=8, stride=4)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  with pytest.raises(ValueError, match="takes no option"):
    attribution.attribute(tiny_classifier, x, t, method="saliency", steps=3)
  with pytest.raises(ValueError, match="is random: pass key"):
    attribution.attribute(tiny_classifier, x, t, method="smoothgrad")
  with pytest.raises(ValueError, match="unknown attribution method 'nope'"):
    attribution.attribute(tiny_classifier, x, t, method="nope")


def test_attribute_many_equals_one_call_and_pads(tiny_classifier, faces):
  x = jaxplain.data.to_float(faces.images[:5])
  t = faces.labels[:5]
  seen = []
  many = attribution.attribute_many(tiny_classifier, x, t, method="saliency",
                                    images_per_batch=2, progress=seen.append)
  np.testing.assert_allclose(many, jaxplain.saliency(tiny_classifier.forward, x, t), rtol=1e-5,
                             atol=1e-7)
  assert seen == [2, 2, 1]


def test_deprecated_names_warn_and_still_work(tiny_classifier, faces):
  x = jaxplain.data.to_float(faces.images[:2])
  t = faces.labels[:2]
  with pytest.warns(DeprecationWarning, match="images_per_batch"):
    a = attribution.attribute_many(tiny_classifier, x, t, method="saliency", chunk=1)
  np.testing.assert_allclose(a, jaxplain.saliency(tiny_classifier.forward, x, t), rtol=1e-5,
                             atol=1e-7)
  plain = functools.partial(jaxplain.saliency, abs=False)
  with pytest.warns(DeprecationWarning, match="attribution_method"):
    old = jaxplain.smoothgrad(tiny_classifier.forward, x, t, key=jax.random.key(0), samples=2,
                              method=plain)
  new = jaxplain.smoothgrad(tiny_classifier.forward, x, t, key=jax.random.key(0), samples=2,
                            attribution_method=plain)
  np.testing.assert_array_equal(old, new)
  from jaxplain import viz
  with pytest.warns(DeprecationWarning, match="style"):
    viz.attribution_figure(x[0], x[0], method="heat_map")


def test_empty_batches_are_named_not_divided_by_zero(tiny_classifier):
  empty = np.zeros((0, 48, 48, 1), np.float32)
  t = np.zeros((0,), np.int32)
  for call in (lambda: jaxplain.smoothgrad(tiny_classifier.forward, empty, t,
                                           key=jax.random.key(0)),
               lambda: jaxplain.occlusion(tiny_classifier.forward, empty, t, window=8, stride=8),
               lambda: jaxplain.saliency(tiny_classifier.forward, empty, t)):
    with pytest.raises(ValueError, match="empty batch"):
      call()
  with pytest.raises(ValueError, match="empty batch"):
    jaxplain.lime.lime_many(tiny_classifier, empty, t, np.zeros((0, 48, 48), np.int32),
                            key=jax.random.key(0))
