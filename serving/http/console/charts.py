"""Small inline SVG charts, drawn on the server: nothing to fetch, nothing to build."""

from __future__ import annotations

from html import escape

# Colour-blind-safe qualitative palette (Okabe & Ito), cycled over routes.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
WIDTH, HEIGHT, PAD = 720, 220, 36


def activity(rows: list[tuple[str, str, int, int]]) -> str:
    """Routing decisions per hour, stacked by route, with the share of uncertain ones as a
    line (right axis, 0 to 100 %). `rows`: (hour, route, decisions, uncertain)."""
    if not rows:
        return '<p class="muted">No routing decisions logged in this window.</p>'
    hours = sorted({h for h, *_ in rows})
    routes = sorted({r for _, r, *_ in rows})
    counts = {(h, r): n for h, r, n, _ in rows}
    totals = {h: sum(n for hh, _, n, _ in rows if hh == h) for h in hours}
    unsure = {h: sum(u for hh, _, _, u in rows if hh == h) for h in hours}
    top = max(totals.values())
    slot = (WIDTH - 2 * PAD) / len(hours)
    scale = (HEIGHT - 2 * PAD) / top
    parts = [
        f'<svg role="img" aria-label="Routing decisions per hour by route, and the share of '
        f'uncertain decisions" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" class="chart">',
        f'<text x="{PAD}" y="14" class="axis">{top} decisions/hour</text>',
        f'<text x="{WIDTH - PAD}" y="14" class="axis" text-anchor="end">uncertain, %</text>',
    ]
    for i, hour in enumerate(hours):
        y = float(HEIGHT - PAD)
        for j, route in enumerate(routes):
            n = counts.get((hour, route), 0)
            if not n:
                continue
            h = n * scale
            y -= h
            parts.append(
                f'<rect x="{PAD + i * slot + 1:.1f}" y="{y:.1f}" width="{max(slot - 2, 1):.1f}" '
                f'height="{h:.1f}" fill="{PALETTE[j % len(PALETTE)]}">'
                f"<title>{escape(hour)}:00 {escape(route)}: {n}</title></rect>"
            )
    points = [
        (PAD + (i + 0.5) * slot, HEIGHT - PAD - (unsure[h] / totals[h]) * (HEIGHT - 2 * PAD))
        for i, h in enumerate(hours)
    ]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    parts.append(f'<polyline points="{line}" class="share"/>')
    for (x, y), hour in zip(points, hours, strict=True):
        share = 100 * unsure[hour] / totals[hour]
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="share">'
            f"<title>{escape(hour)}:00 uncertain: {share:.0f} %</title></circle>"
        )
    parts.append(f'<text x="{PAD}" y="{HEIGHT - 8}" class="axis">{escape(hours[0])}:00</text>')
    parts.append(
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" class="axis" text-anchor="end">'
        f"{escape(hours[-1])}:00 UTC</text></svg>"
    )
    legend = "".join(
        f'<span class="key"><i style="background:{PALETTE[j % len(PALETTE)]}"></i>'
        f"{escape(r)}</span>"
        for j, r in enumerate(routes)
    )
    share_key = '<span class="key share-key"><i></i>uncertain share</span>'
    return "".join(parts) + f'<p class="legend">{legend}{share_key}</p>'
