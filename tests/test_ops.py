"""cnn_jax.ops against the plain JAX operations they replace (and PyTorch where installed):
same outputs, same gradients, including ties, padding, odd sizes and overlapping windows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from cnn_jax import layers, ops
from conftest import require


def _reference_pool(x, window, strides, padding):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                             ((0, 0), *padding, (0, 0)))


def _inputs(shape, seed, ties):
    x = jax.random.normal(jax.random.key(seed), shape)
    # Quarter steps: most windows hold repeated values, so the tie rule is exercised.
    return jnp.round(x * 2) / 4 if ties else x


POOL_CASES = [  # (input shape, window, strides, padding)
    ((2, 8, 8, 3), (2, 2), (2, 2), ((0, 0), (0, 0))),
    ((3, 9, 7, 2), (2, 2), (2, 2), ((0, 0), (0, 0))),    # odd sizes: last row/col unused
    ((2, 11, 13, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet's stem pool, overlapping
    ((2, 13, 13, 3), (3, 3), (2, 2), ((0, 0), (0, 0))),  # AlexNet's pool
    ((2, 7, 9, 2), (2, 3), (1, 2), ((0, 1), (1, 0))),    # asymmetric everything
    ((1, 5, 5, 1), (3, 3), (1, 1), ((1, 1), (1, 1))),
]


@pytest.mark.parametrize("shape,window,strides,padding", POOL_CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_reduce_window(shape, window, strides, padding, ties):
    x = _inputs(shape, 0, ties)
    fast = lambda x: ops.max_pool(x, window, strides, padding)
    ref = lambda x: _reference_pool(x, window, strides, padding)
    y, fast_vjp = jax.vjp(fast, x)
    y_ref, ref_vjp = jax.vjp(ref, x)
    np.testing.assert_array_equal(y, y_ref)
    g = jax.random.normal(jax.random.key(1), y.shape)
    np.testing.assert_array_equal(fast_vjp(g)[0], ref_vjp(g)[0])
    # Forward mode too (the rule is a JVP, transposed for the gradient).
    t = jax.random.normal(jax.random.key(2), x.shape)
    np.testing.assert_array_equal(jax.jvp(fast, (x,), (t,))[1], jax.jvp(ref, (x,), (t,))[1])


def test_max_pool_ties_go_to_the_first_maximum():
    x = jnp.zeros((1, 4, 4, 1))  # every window a four-way tie
    grad = jax.grad(lambda x: ops.max_pool(x, (2, 2), (2, 2), ((0, 0), (0, 0))).sum())(x)
    expected = np.zeros((4, 4))
    expected[::2, ::2] = 1  # the top-left of each window
    np.testing.assert_array_equal(grad[0, :, :, 0], expected)


def test_max_pool_padding_never_wins():
    x = -1.0 - jax.random.uniform(jax.random.key(0), (2, 5, 5, 3))  # all negative
    y = layers.max_pool(x, 3, 2, padding="SAME")
    assert bool(jnp.all(y < -1.0))
    grad = jax.grad(lambda x: layers.max_pool(x, 3, 2, padding="SAME").sum())(x)
    # Every output's gradient lands on a real input position: the total is the output count.
    assert float(grad.sum()) == y.size


def test_max_pool_under_jit_vmap_and_second_order():
    x = _inputs((3, 2, 6, 6, 2), 0, ties=True)
    pool = lambda x: layers.max_pool(x, 2)
    np.testing.assert_array_equal(jax.jit(jax.vmap(pool))(x),
                                  jax.vmap(lambda x: nn.max_pool(x, (2, 2), (2, 2)))(x))
    # The gradient is piecewise constant: its own derivative is zero, as the reference's.
    hvp = jax.jvp(jax.grad(lambda x: (pool(x[0]) ** 2).sum()), (x,), (jnp.ones_like(x),))[1]
    hvp_ref = jax.jvp(jax.grad(lambda x: (nn.max_pool(x[0], (2, 2), (2, 2)) ** 2).sum()),
                      (x,), (jnp.ones_like(x),))[1]
    np.testing.assert_allclose(hvp, hvp_ref)


@pytest.mark.parametrize("shape,window,strides,padding", POOL_CASES)
def test_max_pool_gradient_matches_pytorch(shape, window, strides, padding):
    torch = require("torch")
    if padding[0][0] != padding[0][1] or padding[1][0] != padding[1][1]:
        pytest.skip("PyTorch pads symmetrically only")
    if any(p > k // 2 for (p, _), k in zip(padding, window)):
        pytest.skip("PyTorch allows padding up to half the window")
    x = np.asarray(_inputs(shape, 3, ties=True))
    y, vjp = jax.vjp(lambda x: ops.max_pool(x, window, strides, padding), jnp.asarray(x))
    g = np.asarray(jax.random.normal(jax.random.key(4), y.shape))
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, window, strides, (padding[0][0], padding[1][0]))
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]),
                                  xt.grad.numpy().transpose(0, 2, 3, 1))


CONV_CASES = [  # (input shape, kernel shape, strides, padding, dilation, done as a matmul)
    ((4, 2, 2, 8), (3, 3, 8, 40), (1, 1), ((1, 1), (1, 1)), (1, 1), True),  # VGG's 2x2 maps
    ((3, 5, 5, 4), (5, 5, 4, 40), (1, 1), "VALID", (1, 1), True),            # LeNet's C5
    ((2, 1, 1, 6), (3, 3, 6, 3), (1, 1), "SAME", (1, 1), True),
    ((2, 4, 3, 3), (3, 3, 3, 40), (2, 2), ((1, 1), (1, 1)), (1, 1), True),
    ((2, 5, 5, 3), (2, 2, 3, 40), (1, 1), "VALID", (3, 3), True),            # dilated
    ((2, 3, 1, 1), (2, 2, 1, 6), (2, 1), ((1, 0), (0, 1)), (1, 1), True),
    ((2, 32, 32, 1), (5, 5, 1, 6), (1, 1), "VALID", (1, 1), True),           # LeNet's C1
    ((2, 9, 11, 1), (3, 2, 1, 4), (2, 3), ((1, 2), (0, 1)), (2, 1), True),   # one channel
    ((2, 8, 8, 3), (3, 3, 3, 40), (1, 1), "SAME", (1, 1), False),            # XLA's
    ((2, 14, 14, 6), (5, 5, 6, 16), (1, 1), "VALID", (1, 1), False),         # LeNet's C3
]


@pytest.mark.parametrize("x_shape,k_shape,strides,padding,dilation,matmul", CONV_CASES)
def test_conv_matches_lax(x_shape, k_shape, strides, padding, dilation, matmul):
    x = jax.random.normal(jax.random.key(0), x_shape)
    k = jax.random.normal(jax.random.key(1), k_shape)
    dn = ("NHWC", "HWIO", "NHWC")
    fast = lambda x, k: ops.conv_general_dilated(x, k, strides, padding, rhs_dilation=dilation,
                                                 dimension_numbers=dn)
    ref = lambda x, k: lax.conv_general_dilated(x, k, strides, padding, rhs_dilation=dilation,
                                                dimension_numbers=dn)
    y, fast_vjp = jax.vjp(fast, x, k)
    y_ref, ref_vjp = jax.vjp(ref, x, k)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.key(2), y.shape)
    for got, want in zip(fast_vjp(g), ref_vjp(g)):  # sums of up to 1,568 terms, other order
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert ("conv_general_dilated" in str(jax.make_jaxpr(fast)(x, k))) != matmul


def test_conv_block_uses_the_matmul_form_only_for_few_positions():
    block = layers.ConvBlock(32, 3)
    for size, expect_conv in [(2, False), (8, True)]:
        x = jnp.ones((1, size, size, 3))
        variables = block.init(jax.random.key(0), x)
        jaxpr = str(jax.make_jaxpr(block.apply)(variables, x))
        assert ("conv_general_dilated" in jaxpr) == expect_conv


def test_conv_grouped_and_nchw_go_to_lax():
    x = jax.random.normal(jax.random.key(0), (2, 2, 2, 4))
    k = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    grouped = ops.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn,
                                       feature_group_count=2)
    np.testing.assert_allclose(grouped, lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=2), rtol=1e-6)
    xn = jnp.transpose(x, (0, 3, 1, 2))
    kn = jnp.transpose(jax.random.normal(jax.random.key(1), (3, 3, 4, 5)), (3, 2, 0, 1))
    np.testing.assert_allclose(ops.conv_general_dilated(xn, kn, (1, 1), "SAME"),
                               lax.conv_general_dilated(xn, kn, (1, 1), "SAME"), rtol=1e-6)


def test_compiler_options_reach_the_compiled_step():
    from cnn_jax.train.parallel import DataParallel

    assert jax.default_backend() == "cpu"  # the test suite runs on the CPU
    options = ops.compiler_options()
    assert options == {"xla_cpu_experimental_ynn_fusion_type": ""}
    conv = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x, k = jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
    compiled = lambda f: f.lower(x, k).compile().as_text()
    if "__ynn_fusion" not in compiled(jax.jit(conv)):
        pytest.skip("XLA does not use YNNPACK for this convolution on this machine by default")
    assert "__ynn_fusion" not in compiled(jax.jit(conv, compiler_options=options))
    step = DataParallel("none").train_step(lambda state, batch, axis_name: (conv(state, batch), {}))
    assert "__ynn_fusion" not in compiled(step)
