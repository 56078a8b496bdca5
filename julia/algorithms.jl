# Names the Python side sends, mapped to OrdinaryDiffEq algorithms and SciMLSensitivity adjoints.

const EXPLICIT_ALGORITHMS = ("Tsit5", "DP5", "BS3", "RK4", "Euler", "Vern7", "Vern9", "VCABM")
const STIFF_ALGORITHMS = ("Rodas5P", "Rosenbrock23", "KenCarp4", "TRBDF2", "FBDF", "QNDF",
                          "AutoTsit5Rodas5P")
const ROSENBROCK_ALGORITHMS = ("Rodas5P", "Rosenbrock23", "AutoTsit5Rodas5P")
const SENSITIVITIES = ("GaussAdjoint", "InterpolatingAdjoint", "QuadratureAdjoint",
                       "BacksolveAdjoint")

"""
    AutoTsit5Rodas5P(; kwargs...)

`AutoTsit5(Rodas5P(; kwargs...))`: Tsit5 switching to Rodas5P while the problem is stiff (the `auto`
method); the keywords (`autodiff`) go to the stiff method, which is the one that builds Jacobians.
"""
AutoTsit5Rodas5P(; kwargs...) = AutoTsit5(Rodas5P(; kwargs...))

algorithm_names() = (EXPLICIT_ALGORITHMS..., STIFF_ALGORITHMS...)
sensitivity_names() = SENSITIVITIES

"""
    make_algorithm(name; finite_diff=false)

The OrdinaryDiffEq algorithm called `name`. With `finite_diff`, implicit and Rosenbrock methods
build their Jacobians and time derivatives by finite differences, so that ForwardDiff's Dual
numbers never reach a Python callback.
"""
function make_algorithm(name::AbstractString; finite_diff::Bool = false)
    name == "Tsit5" && return Tsit5()
    name == "DP5" && return DP5()
    name == "BS3" && return BS3()
    name == "RK4" && return RK4()
    name == "Euler" && return Euler()
    name == "Vern7" && return Vern7()
    name == "Vern9" && return Vern9()
    name == "VCABM" && return VCABM()
    if finite_diff
        ad = AutoFiniteDiff()
        name == "Rodas5P" && return Rodas5P(autodiff = ad)
        name == "Rosenbrock23" && return Rosenbrock23(autodiff = ad)
        name == "KenCarp4" && return KenCarp4(autodiff = ad)
        name == "TRBDF2" && return TRBDF2(autodiff = ad)
        name == "FBDF" && return FBDF(autodiff = ad)
        name == "QNDF" && return QNDF(autodiff = ad)
        name == "AutoTsit5Rodas5P" && return AutoTsit5Rodas5P(autodiff = ad)
    else
        name == "Rodas5P" && return Rodas5P()
        name == "Rosenbrock23" && return Rosenbrock23()
        name == "KenCarp4" && return KenCarp4()
        name == "TRBDF2" && return TRBDF2()
        name == "FBDF" && return FBDF()
        name == "QNDF" && return QNDF()
        name == "AutoTsit5Rodas5P" && return AutoTsit5Rodas5P()
    end
    throw(ArgumentError("unknown algorithm \"$name\"; expected one of $(algorithm_names())"))
end

"""
    make_sensealg(name, algorithm; checkpointing=false, fixed_step=false, quad_abstol=1e-6,
                  quad_reltol=1e-3)

The SciMLSensitivity adjoint called `name`. Vector-Jacobian products use Zygote on the native path;
on the callback path the ODEFunction's own `vjp`/`vjp_p` fields are used instead.
QuadratureAdjoint's `abstol`/`reltol` only matter if they equal the solve's: concrete_solve passes
the solve's tolerances on to `adjoint_sensitivities`, whose keywords override the fields
(quadrature_adjoint.jl), so `check_quadrature_tolerances` refuses differing ones.
`InterpolatingAdjoint(checkpointing=true)` with a Rosenbrock method is refused (SciMLSensitivity
issue #1075), and so is it with a `fixed_step` forward solve: SciMLSensitivity re-solves each
checkpoint interval with `reltol`/`abstol` only (src/interpolating_adjoint.jl:49-51, 182-186 at
v7.112.1), without the forward's `adaptive = false`, `dt` and `tstops`, so `Euler` throws ("Fixed
timestep methods require a choice of dt", OrdinaryDiffEqCore src/solve.jl) and `RK4`/`TRBDF2`
re-solve adaptively, along a trajectory other than the one returned.
"""
function make_sensealg(name::AbstractString, algorithm::AbstractString;
                       checkpointing::Bool = false, fixed_step::Bool = false,
                       quad_abstol::Real = 1e-6, quad_reltol::Real = 1e-3)
    vjp = ZygoteVJP()
    name == "GaussAdjoint" && return GaussAdjoint(autojacvec = vjp)
    name == "BacksolveAdjoint" && return BacksolveAdjoint(autojacvec = vjp)
    name == "QuadratureAdjoint" &&
        return QuadratureAdjoint(autojacvec = vjp, abstol = quad_abstol, reltol = quad_reltol)
    if name == "InterpolatingAdjoint"
        if checkpointing && algorithm in ROSENBROCK_ALGORITHMS
            throw(ArgumentError("InterpolatingAdjoint(checkpointing=true) with $algorithm is " *
                                "broken upstream (SciMLSensitivity #1075); use GaussAdjoint or " *
                                "an SDIRK/BDF method"))
        end
        if checkpointing && fixed_step
            throw(ArgumentError("InterpolatingAdjoint(checkpointing=true) re-solves each checkpoint " *
                                "interval without the fixed step ($algorithm); use GaussAdjoint, " *
                                "InterpolatingAdjoint without checkpointing, or adaptive steps"))
        end
        return InterpolatingAdjoint(autojacvec = vjp, checkpointing = checkpointing)
    end
    throw(ArgumentError("unknown sensitivity \"$name\"; expected one of $(SENSITIVITIES)"))
end

"""
    check_quadrature_tolerances(sensitivity; abstol, reltol, quad_abstol, quad_reltol)

Refuse QuadratureAdjoint tolerances that differ from the forward ones: upstream would accept and
ignore them (see `make_sensealg`). The Python side refuses them first, with a BackendError.
"""
function check_quadrature_tolerances(sensitivity::AbstractString; abstol, reltol, quad_abstol,
                                     quad_reltol)
    sensitivity == "QuadratureAdjoint" || return nothing
    (quad_abstol == abstol && quad_reltol == reltol) ||
        throw(ArgumentError("QuadratureAdjoint runs with the forward tolerances (abstol=$abstol, " *
                            "reltol=$reltol); SciMLSensitivity ignores its own abstol/reltol"))
    return nothing
end
