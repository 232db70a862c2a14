"""One Hypothesis strategy for random ``ug.unet`` configurations, shared by the property tests."""

from hypothesis import strategies as st

import unetgraph as ug

DOWNS = (
    ug.Down("maxpool"),
    ug.Down("avgpool"),
    ug.Down("conv"),
    ug.Down("conv", kernel=3, padding=1),
    ug.Down("maxpool", factor=3),
)
UPS = (ug.Up("transpose"), ug.Up("nearest"), ug.Up("linear", kernel=1), ug.Up("transpose", kernel=3))


@st.composite
def unet_arguments(draw, *, dims=(1, 2, 3), max_depth=5, width=None, downs=DOWNS, ups=UPS):
    """Keyword arguments for ``ug.unet(in_channels, out_channels, **kwargs)``. Some combinations
    are refused with typed errors (valid convolutions on too few rows, GroupNorm limits): the
    tests treat that as an outcome, not a failure. ``width`` draws each level's width
    (default 1…6)."""
    width = st.integers(1, 6) if width is None else width
    d = draw(st.sampled_from(dims))
    depth = draw(st.integers(1, max_depth if d < 3 else 3))
    widths = tuple(draw(st.lists(width, min_size=depth, max_size=depth)))
    valid = draw(st.booleans())
    merge = draw(st.sampled_from(["concat", "add"]))
    block = ug.ConvBlock(
        convs=draw(st.integers(1, 3)),
        kernel=draw(st.sampled_from([1, 3])),
        padding="valid" if valid else "same",
        norm=draw(st.sampled_from(["none", "batch", "group", "layer"])),
        groups=1,
        act=draw(st.sampled_from(["relu", "silu"])),
        bias=draw(st.sampled_from([None, True, False])),
    )
    down, up = draw(st.sampled_from(downs)), draw(st.sampled_from(ups))
    if merge == "add" and up.mode != "transpose":  # add needs the up's channels equal to the skip's
        up = up.with_(conv=True)
    if up.mode == "transpose":
        up = up.with_(factor=down.factor, kernel=max(down.factor, up.kernel or 0))
    else:
        up = up.with_(factor=down.factor)
    head = ug.Head(kernel=draw(st.sampled_from([1, 3])))
    return dict(widths=widths, dims=d, block=block, down=down, up=up, merge=ug.Merge(merge, crop=valid), head=head)
