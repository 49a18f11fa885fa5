"""What users run: the command line, pipelines, predict / evaluate, the bench, the GPU check, the
tutorials' setup. The only layer that may import anything below it.
"""
