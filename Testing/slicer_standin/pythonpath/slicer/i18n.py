"""Stand-in for slicer.i18n: no translation catalogue, the source text is shown."""


def tr(text):
    return text


def translate(context, text):
    return text
