"""Prompt templates: how a class name becomes a caption ("a photo of a {}.").

Shared by zero-shot evaluation (class embeddings from prompts) and by
training on class-name captions (data.class_captions), so both read the same
text for a class.
"""

from __future__ import annotations

from typing import Callable, Union

Template = Union[str, Callable[[str], str]]


def fill_template(template: Template, classname: str) -> str:
  """Templates are ``"a photo of a {}."`` strings or ``str -> str`` callables."""
  if callable(template):
    return template(classname)
  if "{}" not in template:
    raise ValueError(f"prompt template {template!r} has no '{{}}' placeholder")
  return template.replace("{}", classname)
