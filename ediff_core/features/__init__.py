"""§4's controls, each a ``core.feature.Feature``; ``FEATURES`` is the order ``EDiffPipeline`` consults them in
(the prompt switch before the style window, so the window applies to the prompt in force)."""

from .attention_maps import AttentionRecorder
from .paint_with_words import Paint
from .prompt_switch import PromptSwitch
from .style import Style

FEATURES = (PromptSwitch, Style, Paint, AttentionRecorder)
