"""The report page as a Jinja2 template (autoescaped; fields marked ``|safe`` are HTML that
falstudy/report/html.py built and escaped itself)."""

from __future__ import annotations

from typing import Any

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ title }}</title>
<style>{{ css|safe }}</style></head>
<body>
<h1>{{ title }}</h1>
{% if header %}<p class="study">{% for line in header %}{{ line }}{% if not loop.last %}<br>{% endif %}{% endfor %}</p>{% endif %}
<p class="meta">{{ source }}<br>Written {{ when }} by <code>falstudy report</code>; {{ drawn }} of {{ total }} figures drawn.</p>
<ul>
{% for section in sections %}{% for block in section.blocks %}<li><a href="#{{ block.key }}">{{ block.title }}</a>{% if block.kind != "figure" %} (not drawn){% endif %}</li>
{% endfor %}{% endfor %}</ul>
{% for section in sections %}
<h2 id="{{ section.key }}">{{ section.heading }}</h2>
{% if section.intro %}<p class="meta">{{ section.intro|safe }}</p>{% endif %}
{% for block in section.blocks %}
<h3 id="{{ block.key }}">{{ block.title }}</h3>
{% if block.kind == "figure" %}<figure>
<img src="data:image/png;base64,{{ block.image }}" alt="{{ block.title }}">
<figcaption>{{ block.text|safe }}</figcaption>
</figure>
{{ block.table|safe }}
{% elif block.kind == "missing" %}<div class="missing">Not drawn: {{ block.text|safe }}</div>
{% else %}<div class="failed">Failed: {{ block.text|safe }}</div>
{% endif %}{% endfor %}
{{ section.html|safe }}
{% endfor %}
</body></html>
"""


def render_page(**fields: Any) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.from_string(PAGE).render(**fields)
