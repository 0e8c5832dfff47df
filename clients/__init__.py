"""Methods, one package each: a method's client part and its server part in one ``Method`` class.

``fedsparse.clients.registry.resolve(name)`` finds built-ins, installed plug-ins (entry-point
group ``fedsparse.methods``) and ``module:Class`` / ``path/to/file.py:Class``; see
``fedsparse.method`` for the interface and ``examples/custom_method`` for a plug-in.
"""
