"""``twistd mathrun``: the plugin that makes the service from the options."""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer

from mathrun.options import Options


@implementer(IServiceMaker, IPlugin)
class MathrunServiceMaker:
    tapname = "mathrun"
    description = "Maxima, Asymptote and Why3 for network clients, in a sandbox."
    options = Options

    def makeService(self, options):
        from mathrun.lean_imports import leave_out_tls

        leave_out_tls(options)  # before the reactor's modules are imported
        if not options["twisted-reactor"]:
            from mathrun.reactor import install

            install()  # unless twistd --reactor chose one
        from mathrun.service import make_service

        return make_service(options)


serviceMaker = MathrunServiceMaker()
