# Entry points called from Python: solve forward, keep the Zygote pullback, and run it backwards.

"""
Result of a forward solve. `ys` is `(D, B, T)`; `back` is the Zygote pullback of the solve;
the statistics come from the solution's `DEStats`. `t_final` is the last time of the returned
solution, which SciMLSensitivity sets to `ts[end]` even after a failure (BacksolveAdjoint: the time
where the solver stopped, saved after the output times reached since `save_end = true` is passed);
`t_reached` is the time the solver really reached and `state_finite` whether the state there is
finite (see `reached_time`).
"""
struct ForwardResult
    ys::Array{Float64, 3}
    back::Any
    success::Bool
    retcode::String
    t_final::Float64
    t_reached::Float64
    state_finite::Bool
    nf::Int
    naccept::Int
    nreject::Int
    njacs::Int
    state_size::Tuple{Int, Int}
    n_params::Int
end

stat_count(stats, name::Symbol) = (stats === nothing || !hasproperty(stats, name)) ? 0 :
                                  Int(getproperty(stats, name))

function solver_options(ts; abstol, reltol, maxiters, dt, fixed_step)
    opts = (abstol = Float64(abstol), reltol = Float64(reltol))
    maxiters === nothing || (opts = merge(opts, (maxiters = Int(maxiters),)))
    dt === nothing || (opts = merge(opts, (dt = Float64(dt),)))
    # Fixed-grid methods step on dt and also stop at every output time, as torch's do.
    fixed_step && (opts = merge(opts, (adaptive = false, tstops = ts)))
    return opts
end

"""
    reached_time(prob, alg, u0, θ, opts) -> (Float64, Bool)

The time a failed solve really reached, and whether the state there is finite. After a failure
SciMLSensitivity's concrete_solve still returns `sol(ts)` (the interpolation extrapolates past the
failure) and `sensitivity_solution` sets `sol.t = ts`, so the AD solution cannot tell. A plain
solve (no AD, nothing saved) stops where the forward one did; its integrator's `t` and `u` are the
answer. The state tells the two causes of `ReturnCode.Unstable` apart (SciMLBase `check_error`,
src/integrator_interface.jl): a non-finite state, or a rejected step whose `dt` was forced below
`eps(t)` (how a step-size underflow ends with OrdinaryDiffEq's default `dtmin = 0`).
"""
function reached_time(prob, alg, u0, θ, opts)
    integrator = init(remake(prob; u0 = u0, p = θ), alg; save_everystep = false,
                      save_start = false, save_end = false, opts...)
    solve!(integrator)
    return Float64(integrator.t), all(isfinite, integrator.u)
end

function run_forward(prob, alg, sensealg, u0::Matrix{Float64}, θ::Vector{Float64},
                     ts::Vector{Float64}, opts)
    # Both alg and sensealg are always explicit: the automatic sensealg choice may differentiate f
    # with ForwardDiff or Zygote (Dual numbers or Zygote reaching a Python callback), and the
    # automatic algorithm choice is not one of the methods the Python side maps.
    function solve_array(u0_, θ_)
        sol = solve(prob, alg; u0 = u0_, p = θ_, saveat = ts, sensealg = sensealg, opts...)
        return Array(sol), sol
    end
    (ys, sol), back = Zygote.pullback(solve_array, u0, θ)
    stats = hasproperty(sol, :stats) ? sol.stats : nothing
    t_final = isempty(sol.t) ? ts[1] : Float64(sol.t[end])
    success = successful_retcode(sol)
    t_reached, state_finite = success ? (ts[end], true) : reached_time(prob, alg, u0, θ, opts)
    return ForwardResult(Array{Float64, 3}(ys), back, success, string(sol.retcode), t_final,
                         t_reached, state_finite, stat_count(stats, :nf), stat_count(stats, :naccept),
                         stat_count(stats, :nreject), stat_count(stats, :njacs), size(u0),
                         length(θ))
end

function prepare(u0, θ, ts)
    u0m = Matrix{Float64}(u0)
    θv = collect(Float64, θ)
    tsv = collect(Float64, ts)
    length(tsv) >= 2 || throw(ArgumentError("need at least two output times"))
    # Every adjoint but BacksolveAdjoint returns the states at sort(ts) and walks the cotangents in
    # that order (SciMLSensitivity concrete_solve.jl, ReverseLossCallback), so a decreasing ts would
    # be paired with the wrong states. The Python side solves a decreasing t in reversed time
    # s = -t (`time_reversed` / the callbacks' sign), so ts arrives increasing.
    all(>(0), diff(tsv)) ||
        throw(ArgumentError("output times must be strictly increasing (solve a decreasing t in " *
                            "reversed time: time_reversed = true with ts = -t)"))
    return u0m, θv, tsv
end

"""
    solve_built(prob, alg, u0m, θv, tsv; algorithm, sensitivity, checkpointing, abstol, reltol,
                quad_abstol, quad_reltol, maxiters, dt, fixed_step, event_condition, event_affect,
                event_jumped, event_len, event_points) -> ForwardResult

The end that `forward_mlp` and `forward_callback` share once their problem and algorithm are built
(the keywords are theirs): with `event_condition` a forward solve with the events' callback
(`event_callback`, `run_events`; no gradients), checked before any sensitivity algorithm is made,
else the differentiable solve (`run_forward`).
"""
function solve_built(prob, alg, u0m, θv, tsv; algorithm, sensitivity, checkpointing, abstol,
                     reltol, quad_abstol, quad_reltol, maxiters, dt, fixed_step, event_condition,
                     event_affect, event_jumped, event_len, event_points)
    opts = solver_options(tsv; abstol, reltol, maxiters, dt, fixed_step)
    if events_requested(event_condition)
        cb = event_callback(event_condition, event_affect, event_jumped, event_len, length(u0m);
                            interp_points = event_points)
        return run_events(prob, alg, u0m, θv, tsv, opts, cb)
    end
    sensealg = make_sensealg(sensitivity, algorithm; checkpointing, fixed_step, quad_abstol,
                             quad_reltol)
    return run_forward(prob, alg, sensealg, u0m, θv, tsv, opts)
end

"""
    forward_mlp(n_in, n_out, has_bias, activations, time_input, θ, u0, ts; algorithm,
                sensitivity, checkpointing=false, abstol, reltol, quad_abstol=abstol,
                quad_reltol=reltol, maxiters=nothing, dt=nothing, fixed_step=false,
                time_reversed=false) -> ForwardResult

Solve the MLP Neural ODE (Path A) from `u0` (D, B) over the increasing times `ts`, saving at `ts`.
`activations` is a comma-separated list of names, one per layer. With `time_reversed` the problem
is `du/ds = -mlp(u, θ, -s)`: the Python side sends `ts = -t` for a decreasing `t`. With
`event_condition` (and `event_affect`, `event_jumped`, `event_len`, `event_points`) the solve runs
forwards only with the events' callback (`event_callback`, `run_events`; no gradients).
"""
function forward_mlp(n_in, n_out, has_bias, activations::AbstractString, time_input::Bool, θ,
                     u0, ts; algorithm::AbstractString, sensitivity::AbstractString,
                     checkpointing::Bool = false, abstol::Real, reltol::Real,
                     quad_abstol::Real = abstol, quad_reltol::Real = reltol, maxiters = nothing,
                     dt = nothing, fixed_step::Bool = false, time_reversed::Bool = false,
                     event_condition = nothing, event_affect = nothing, event_jumped = nothing,
                     event_len::Integer = 0, event_points::Integer = 10)
    mlp = MLP(collect(Int, n_in), collect(Int, n_out), collect(Bool, has_bias),
              split(activations, ","), time_input)
    u0m, θv, tsv = prepare(u0, θ, ts)
    length(θv) == mlp.n_params ||
        throw(DimensionMismatch("θ has $(length(θv)) entries, the MLP needs $(mlp.n_params)"))
    check_quadrature_tolerances(sensitivity; abstol, reltol, quad_abstol, quad_reltol)
    σ = time_reversed ? -1.0 : 1.0
    prob = ODEProblem{false}(MLPField(mlp, σ), u0m, (tsv[1], tsv[end]), θv)
    alg = make_algorithm(algorithm)
    return solve_built(prob, alg, u0m, θv, tsv; algorithm, sensitivity, checkpointing, abstol, reltol,
                       quad_abstol, quad_reltol, maxiters, dt, fixed_step, event_condition,
                       event_affect, event_jumped, event_len, event_points)
end

"""
    forward_callback(f, vjp, jac, θ, u0, ts; algorithm, sensitivity, ...) -> ForwardResult

Solve with a torch module as the vector field (Path B); see `callback_function`. `θ` is the flat
parameter vector (its values are only used for sizes: torch holds the parameters). For a decreasing
`t` the Python callbacks already compute the reversed-time field `-f(-s, u)`, and `ts = -t`. The
`event_*` keywords are those of `forward_mlp`.
"""
function forward_callback(f::Py, vjp::Py, jac, θ, u0, ts; algorithm::AbstractString,
                          sensitivity::AbstractString, checkpointing::Bool = false,
                          abstol::Real, reltol::Real, quad_abstol::Real = abstol,
                          quad_reltol::Real = reltol, maxiters = nothing, dt = nothing,
                          fixed_step::Bool = false, event_condition = nothing,
                          event_affect = nothing, event_jumped = nothing,
                          event_len::Integer = 0, event_points::Integer = 10)
    u0m, θv, tsv = prepare(u0, θ, ts)
    check_quadrature_tolerances(sensitivity; abstol, reltol, quad_abstol, quad_reltol)
    stiff = algorithm in STIFF_ALGORITHMS
    cb = TorchCallbacks(f, vjp, jac, length(u0m), length(θv))
    odef = callback_function(cb; stiff)
    prob = ODEProblem(odef, u0m, (tsv[1], tsv[end]), θv)
    alg = make_algorithm(algorithm; finite_diff = true)
    return solve_built(prob, alg, u0m, θv, tsv; algorithm, sensitivity, checkpointing, abstol, reltol,
                       quad_abstol, quad_reltol, maxiters, dt, fixed_step, event_condition,
                       event_affect, event_jumped, event_len, event_points)
end

"""
    SolverWarnings(previous) <: AbstractLogger

A logger that records the messages of the Warn-or-above log records it sees (deprecation warnings,
group `:depwarn`, aside) and forwards every record to `previous` as well, so the user still sees
them. Used through Julia's logging interface (Base.CoreLogging, which the Logging standard library
re-exports): `shouldlog`, `min_enabled_level`, `handle_message`, `catch_exceptions`.
"""
struct SolverWarnings <: CoreLogging.AbstractLogger
    previous::CoreLogging.AbstractLogger
    messages::Vector{String}
    lock::ReentrantLock
end

SolverWarnings(previous::CoreLogging.AbstractLogger) =
    SolverWarnings(previous, String[], ReentrantLock())

CoreLogging.min_enabled_level(l::SolverWarnings) =
    min(CoreLogging.Warn, CoreLogging.min_enabled_level(l.previous))

CoreLogging.shouldlog(l::SolverWarnings, level, _module, group, id) =
    level >= CoreLogging.Warn || CoreLogging.shouldlog(l.previous, level, _module, group, id)

CoreLogging.catch_exceptions(l::SolverWarnings) = CoreLogging.catch_exceptions(l.previous)

function CoreLogging.handle_message(l::SolverWarnings, level, message, _module, group, id, file,
                                    line; kwargs...)
    if level >= CoreLogging.Warn && group !== :depwarn
        lock(() -> push!(l.messages, string(message)), l.lock)
    end
    # Forward what the previous logger would have taken itself (its own filters apply).
    if level >= CoreLogging.min_enabled_level(l.previous) &&
       CoreLogging.shouldlog(l.previous, level, _module, group, id)
        CoreLogging.handle_message(l.previous, level, message, _module, group, id, file, line;
                                   kwargs...)
    end
    return nothing
end

"""
    AdjointSolveFailed(messages)

Thrown by `backward` when the adjoint's backward solve failed: SciMLSensitivity does not check its
return code (`state_values(adj_sol)[end]` is returned whatever `adj_sol.retcode` is;
src/gauss_adjoint.jl, src/sensitivity_interface.jl, src/quadrature_adjoint.jl), so the only trace
of the failure is the solver's warning (DiffEqBase `check_error`: MaxIters, DtLessThanMin,
Unstable, ...), which `messages` holds.
"""
struct AdjointSolveFailed <: Exception
    messages::Vector{String}
end

function Base.showerror(io::IO, e::AdjointSolveFailed)
    print(io, "AdjointSolveFailed: the adjoint's backward solve failed; its gradients are not " *
              "returned. The solver warned:\n", join(e.messages, "\n"))
end

"""
    adjoint_failure(e) -> Union{String, Nothing}

The solver's warnings when `e` is the `AdjointSolveFailed` that `backward` throws, else `nothing`
(the Python side turns them into a `SolverError`).
"""
adjoint_failure(e) = e isa AdjointSolveFailed ? join(e.messages, "\n") : nothing

"""
    backward(result, ybar) -> (u0bar, θbar)

Gradients of ⟨ybar, ys⟩ with respect to the initial state `(D, B)` and the parameters, given the
cotangent `ybar` `(D, B, T)` of the saved states.

Throws `AdjointSolveFailed` when the backward solve warned (Warn or above) while the pullback ran:
SciMLSensitivity returns the gradients of a failed backward solve without checking its retcode,
so the warnings are the only sign (see `SolverWarnings`).
"""
function backward(result::ForwardResult, ybar)
    Ȳ = Array{Float64, 3}(ybar)
    size(Ȳ) == size(result.ys) ||
        throw(DimensionMismatch("cotangent has size $(size(Ȳ)), states have $(size(result.ys))"))
    warnings = SolverWarnings(CoreLogging.current_logger())
    ū0, θ̄ = CoreLogging.with_logger(() -> result.back((Ȳ, nothing)), warnings)
    isempty(warnings.messages) || throw(AdjointSolveFailed(copy(warnings.messages)))
    ū0 = ū0 === nothing ? zeros(result.state_size) : Matrix{Float64}(reshape(ū0, result.state_size))
    θ̄ = θ̄ === nothing ? zeros(result.n_params) : collect(Float64, vec(θ̄))
    return ū0, θ̄
end

"""
    python_exception(e) -> Union{Py, Nothing}

The Python exception inside the Julia exception `e`, if a Python callback raised one: `e` itself
when it is a `PyException`, else searched through the fields (and a failed task's exception) of
the exceptions solver layers wrap it in. A `PyException` that reaches the juliacall boundary
unwrapped is restored as the original Python exception by PythonCall itself (src/JlWrap/base.jl,
`exc isa PyException` -> `PyErr_Restore`); this is the fallback for one a solver layer wrapped, so
that the Python side can re-raise the user's own error instead of a `juliacall.JuliaError`.
"""
function python_exception(e, depth::Int = 0)
    e isa PyException && return e.v
    depth > 8 && return nothing
    if e isa TaskFailedException
        return python_exception(e.task.exception, depth + 1)
    elseif e isa CompositeException
        for x in e.exceptions
            found = python_exception(x, depth + 1)
            found === nothing || return found
        end
        return nothing
    end
    e isa Exception || return nothing
    for name in fieldnames(typeof(e))
        isdefined(e, name) || continue
        x = getfield(e, name)
        x isa Exception || continue
        found = python_exception(x, depth + 1)
        found === nothing || return found
    end
    return nothing
end
