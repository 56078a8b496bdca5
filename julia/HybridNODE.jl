"""
    HybridNODE

The Julia half of hybrid_node's `backend="julia"`: solves Neural ODEs with OrdinaryDiffEq and
differentiates them with SciMLSensitivity, either for an MLP rebuilt natively from torch's flat
parameter vector (`forward_mlp`) or for any torch module called back through PythonCall
(`forward_callback`). `backward` turns the cotangent of the saved states into gradients of the
initial state and the parameters.

The Python side (hybrid_node/julia/backend.py) uses the layout of this module: a torch
`(B, D)` state is a Julia `(D, B)` matrix, saved states are `(D, B, T)`, everything is Float64.
"""
module HybridNODE

# Julia's logging interface (the Logging standard library re-exports it): `backward` watches the
# backward solve's warnings with it (bridge.jl, SolverWarnings).
import Base.CoreLogging
using ADTypes: AutoFiniteDiff
using OrdinaryDiffEqAdamsBashforthMoulton: VCABM
using OrdinaryDiffEqBDF: FBDF, QNDF
using OrdinaryDiffEqLowOrderRK: BS3, DP5, Euler, RK4
using OrdinaryDiffEqRosenbrock: Rodas5P, Rosenbrock23
using OrdinaryDiffEqSDIRK: KenCarp4, TRBDF2
using OrdinaryDiffEqTsit5: AutoTsit5, Tsit5
using OrdinaryDiffEqVerner: Vern7, Vern9
using PrecompileTools: @compile_workload, @setup_workload
using PythonCall: Py, PyArray, PyException, pyconvert
# SciMLBase itself for `mark_discontinuity!` (events.jl): `derivative_discontinuity!` exists from
# SciMLBase 3 on only, so it is looked up at run time instead of imported.
using SciMLBase: SciMLBase, FullSpecialize, ODEFunction, ODEProblem, VectorContinuousCallback,
                  init, remake, set_u!, solve, solve!, successful_retcode, terminate!
using SciMLSensitivity: BacksolveAdjoint, GaussAdjoint, InterpolatingAdjoint, QuadratureAdjoint,
                        ZygoteVJP
using Zygote: Zygote

export forward_mlp, forward_callback, backward, python_exception, adjoint_failure,
       algorithm_names, sensitivity_names

include("activations.jl")
include("mlp.jl")
include("algorithms.jl")
include("callback.jl")
include("events.jl")
include("bridge.jl")
include("precompile.jl")

end # module HybridNODE
