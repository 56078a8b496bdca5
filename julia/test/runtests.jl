# HybridNODE's own tests, for a machine with Julia (no torch needed). From the repository root:
#     cd hybrid_node/_julia/HybridNODE && julia --project=. -e 'using Pkg; Pkg.test()'
# (that directory is the package: Project.toml, src/ and test/ link to the repository's files).
# The callback path is driven by Python callables made with PythonCall's `pyfunc` and the standard
# library's `array`, so only PythonCall's own Python is needed.
using HybridNODE
using HybridNODE: MLP, MLPField, apply_activation, activation_code, ACTIVATION_NAMES
using LinearAlgebra: I
using PythonCall: pyfunc, pyimport, pylist, pybuiltins, PyException
using Test

const A = [-0.5 1.0; -1.0 -0.2]          # du/dt = A u, exact u(t) = exp(A (t - t0)) u0
const U0 = [1.0 -0.3; 0.5 0.8]            # (D, B) = (2, 2)
const θA = vec(permutedims(A))            # torch's row-major Linear(2, 2).weight == A
const TOL = (abstol = 1e-12, reltol = 1e-12)

exact(ts) = cat([exp(A * (t - ts[1])) * U0 for t in ts]...; dims = 3)
weights(T) = reshape(collect(range(0.5, 2.0; length = 4T)), 2, 2, T)
# d/du0 of sum(w .* u(t_i)) = sum_i exp(A (t_i - t0))' w_i
exact_u0bar(ts, w) = sum(exp(A * (ts[i] - ts[1]))' * w[:, :, i] for i in eachindex(ts))

linear_mlp() = (Int[2], Int[2], Bool[false], "identity", false)

@testset "HybridNODE" begin
    @testset "MLP translation (torch layout)" begin
        n_in, n_out = [3, 4], [4, 2]
        θ = collect(range(-1.0, 1.0; length = 3 * 4 + 4 + 4 * 2 + 2))
        mlp = MLP(n_in, n_out, [true, true], ["tanh", "identity"], true)
        @test mlp.n_params == length(θ)
        u, t = [0.2 -0.1; 0.4 0.3], 0.7
        W1 = permutedims(reshape(θ[1:12], 3, 4)); b1 = θ[13:16]
        W2 = permutedims(reshape(θ[17:24], 4, 2)); b2 = θ[25:26]
        x = vcat(u, fill(t, 1, 2))
        @test mlp(u, θ, t) ≈ W2 * tanh.(W1 * x .+ b1) .+ b2
        @test MLPField(mlp, -1.0)(u, θ, -t) ≈ -mlp(u, θ, t)
        # one concrete type for every architecture (no recompilation per network)
        @test typeof(MLP([2], [2], [false], ["relu"], false)) === typeof(mlp)
        for (k, name) in enumerate(ACTIVATION_NAMES)
            @test activation_code(name) == k
            @test apply_activation(k, [-0.5, 0.5]) ≈ HybridNODE.activation(name).([-0.5, 0.5])
        end
        # Far below zero exp(-x) overflows: torch's values and derivatives there are 0 (sigmoid)
        # and -0 (silu), not the NaN of differentiating 1 / (1 + exp(-x)).
        z = [-800.0, -710.0, -1.0, 0.0, 1.0]
        for code in (activation_code("sigmoid"), activation_code("silu"))
            g = HybridNODE.Zygote.gradient(v -> sum(apply_activation(code, v)), z)[1]
            @test all(isfinite, g) && g[1] == 0 && g[2] == 0
        end
    end

    @testset "native path, $sens, $alg" for sens in sensitivity_names(), alg in ("Tsit5", "Vern9")
        for ts in ([0.0, 0.4, 1.1, 1.5], [1.5, 0.9, 0.2, -0.4])
            reversed = ts[end] < ts[1]
            r = forward_mlp(linear_mlp()..., θA, U0, reversed ? -ts : ts; algorithm = alg,
                            sensitivity = sens, time_reversed = reversed, TOL...)
            @test r.success
            @test r.ys ≈ exact(ts) rtol = 1e-8
            w = weights(length(ts))
            ū0, θ̄ = backward(r, w)
            @test ū0 ≈ exact_u0bar(ts, w) rtol = 1e-6
            # θ gradient against central differences of the exact solution
            loss(θ) = sum(w .* cat([exp(permutedims(reshape(θ, 2, 2)) * (t - ts[1])) * U0
                                    for t in ts]...; dims = 3))
            h = 1e-6
            fd = [(loss(θA + h * e) - loss(θA - h * e)) / 2h for e in eachcol(Matrix(1.0I, 4, 4))]
            @test θ̄ ≈ fd rtol = 1e-5
        end
    end

    @testset "stiff native path, $alg" for alg in ("Rodas5P", "KenCarp4", "FBDF")
        ts = [0.0, 0.5, 1.0]
        r = forward_mlp(linear_mlp()..., θA, U0, ts; algorithm = alg,
                        sensitivity = "GaussAdjoint", abstol = 1e-10, reltol = 1e-10)
        @test r.success
        @test r.ys ≈ exact(ts) rtol = 1e-6
    end

    @testset "callback path, $sens" for sens in sensitivity_names()
        arr(v) = pyimport("array").array("d", pylist(collect(Float64, v)))
        f = pyfunc((u, t) -> arr(vec(A * reshape(u, 2, 2))))
        vjp = pyfunc((λ, u, t) -> begin
            L, X = reshape(λ, 2, 2), reshape(u, 2, 2)
            arr(vcat(vec(A' * L), vec(permutedims(L * X'))))  # [λᵀ∂f/∂u; λᵀ∂f/∂θ (row-major)]
        end)
        ts = [0.0, 0.4, 1.1]
        r = forward_callback(f, vjp, nothing, θA, U0, ts; algorithm = "Tsit5",
                             sensitivity = sens, TOL...)
        @test r.success
        @test r.ys ≈ exact(ts) rtol = 1e-8
        w = weights(3)
        ū0, θ̄ = backward(r, w)
        @test ū0 ≈ exact_u0bar(ts, w) rtol = 1e-6
        native = backward(forward_mlp(linear_mlp()..., θA, U0, ts; algorithm = "Tsit5",
                                      sensitivity = sens, TOL...), w)[2]
        @test θ̄ ≈ native rtol = 1e-6
    end

    @testset "events through Python callbacks (VectorContinuousCallback)" begin
        # a ball under gravity as a native MLP with bias: h' = v, v' = -g; it bounces with
        # restitution 0.8 at t_k = t_1 (1 + 2 e + ... + 2 e^(k-1)), t_1 = sqrt(2 h / g)
        g, e, h = 9.81, 0.8, 2.0
        θball = [0.0, 1.0, 0.0, 0.0, 0.0, -g]   # row-major W = [0 1; 0 0], then b = [0, -g]
        ball = (Int[2], Int[2], Bool[true], "identity", false)
        arr(v) = pyimport("array").array("d", pylist(collect(Float64, v)))
        hits = Float64[]
        after = Ref(zeros(2))
        cond = pyfunc((u, t) -> arr([u[1]]))
        directions = Int[]
        function bounce(t, u, idx, direction)
            push!(directions, direction)
            direction < 0 || return HybridNODE.EVENT_IGNORE   # direction -1: falling through zero
            push!(hits, t)
            after[] = [u[1], -e * u[2]]
            return HybridNODE.EVENT_JUMP
        end
        jumped = pyfunc(() -> arr(after[]))
        ts = [0.0, 1.0, 2.5]
        r = forward_mlp(ball..., θball, reshape([h, 0.0], 2, 1), ts; algorithm = "Tsit5",
                        sensitivity = "GaussAdjoint", event_condition = cond,
                        event_affect = pyfunc(bounce), event_jumped = jumped, event_len = 1,
                        event_points = 10, abstol = 1e-12, reltol = 1e-12)
        t1 = sqrt(2h / g)
        want = [t1, t1 + 2e * sqrt(2g * h) / g, t1 + 2e * sqrt(2g * h) / g + 2e^2 * sqrt(2g * h) / g]
        @test r.success && r.back === nothing
        @test hits ≈ want[1:length(hits)] rtol = 1e-8
        @test length(hits) >= 2 && size(r.ys) == (2, 1, 3)
        # DiffEqBase tells the direction: every impact is a downcrossing of the height
        @test !isempty(directions) && all(==(-1), directions)
        # terminal: the first impact ends the solve, the saved states stop before it
        stop = pyfunc((t, u, idx, direction) -> HybridNODE.EVENT_TERMINATE)
        r = forward_mlp(ball..., θball, reshape([h, 0.0], 2, 1), ts; algorithm = "Tsit5",
                        sensitivity = "GaussAdjoint", event_condition = cond,
                        event_affect = stop, event_jumped = jumped, event_len = 1,
                        abstol = 1e-12, reltol = 1e-12)
        @test r.success && occursin("Terminated", r.retcode)
        @test r.t_reached ≈ t1 rtol = 1e-8
        @test size(r.ys, 3) == 1
    end

    @testset "a failed backward solve throws instead of returning gradients" begin
        # SciMLSensitivity does not check the backward solve's retcode; backward() watches the
        # solver's warnings. The forward solve needs a few steps, the backward one stops at each
        # of the 20 output times (the cotangents' callback), so maxiters = 12 fails it only.
        warnings = HybridNODE.SolverWarnings(Base.CoreLogging.NullLogger())
        Base.CoreLogging.with_logger(warnings) do
            @info "not recorded"
            @warn "recorded"
        end
        @test warnings.messages == ["recorded"]
        @test adjoint_failure(HybridNODE.AdjointSolveFailed(["a", "b"])) == "a\nb"
        @test adjoint_failure(ErrorException("other")) === nothing
        ts = collect(range(0.0, 1.0; length = 20))
        r = forward_mlp(linear_mlp()..., θA, U0, ts; algorithm = "Tsit5",
                        sensitivity = "GaussAdjoint", maxiters = 12, abstol = 1e-6,
                        reltol = 1e-6)
        @test r.success
        @test_throws HybridNODE.AdjointSolveFailed backward(r, ones(2, 2, 20))
    end

    @testset "failures report the time reached" begin
        ts = [0.0, 1.0, 50.0]
        r = forward_mlp(linear_mlp()..., θA, U0, ts; algorithm = "Tsit5",
                        sensitivity = "GaussAdjoint", maxiters = 5, TOL...)
        @test !r.success && occursin("MaxIters", r.retcode)
        @test 0.0 < r.t_reached < 50.0
    end

    @testset "BacksolveAdjoint's solution ends where a failed solve stopped" begin
        # concrete_solve passes save_end = true as a Bool, so OrdinaryDiffEqCore saves the point
        # where the solver stopped after the output times reached (the stand-in engine assumes it).
        ts = [0.0, 1.0, 50.0]
        r = forward_mlp(linear_mlp()..., θA, U0, ts; algorithm = "Tsit5",
                        sensitivity = "BacksolveAdjoint", maxiters = 5, TOL...)
        @test !r.success && r.t_final == r.t_reached < 1.0
        @test size(r.ys, 3) == 2  # u(0) and the state at t_reached
    end

    @testset "fixed RK4 steps stop at upstream's default maxiters" begin
        # maxiters = anyadaptive(alg) ? 1000000 : typemax(Int) (OrdinaryDiffEqCore solve.jl): RK4
        # can adapt, so even with adaptive = false it stops after 10^6 steps (t = 0.1 here). The
        # Python side sends an explicit limit for that reason.
        ts = [0.0, 0.2]
        r = forward_mlp(linear_mlp()..., θA, U0, ts; algorithm = "RK4",
                        sensitivity = "GaussAdjoint", dt = 1e-7, fixed_step = true, TOL...)
        @test !r.success && occursin("MaxIters", r.retcode) && abs(r.t_reached - 0.1) < 1e-7
    end

    @testset "a step-size underflow is Unstable with a finite state" begin
        # u' = u², u(0) = 1 blows up at t = 1. With the default dtmin = 0, SciMLBase's check_error
        # ends it in its dt_epsilon branch (a rejected step with dt <= eps(t): ReturnCode.Unstable,
        # src/integrator_interface.jl), the code a non-finite state also gets; state_finite tells
        # the Python side it is an underflow.
        arr(v) = pyimport("array").array("d", pylist(collect(Float64, v)))
        f = pyfunc((u, t) -> arr(collect(Float64, u) .^ 2))
        vjp = pyfunc((λ, u, t) -> arr(vcat(2 .* collect(Float64, u) .* collect(Float64, λ), 0.0)))
        r = forward_callback(f, vjp, nothing, [0.0], ones(1, 1), [0.0, 2.0]; algorithm = "Tsit5",
                             sensitivity = "GaussAdjoint", abstol = 1e-8, reltol = 1e-6)
        @test !r.success && occursin("Unstable", r.retcode)
        @test r.state_finite && abs(r.t_reached - 1.0) < 1e-3
    end

    @testset "refusals" begin
        @test_throws ArgumentError forward_mlp(linear_mlp()..., θA, U0, [1.0, 0.0];
                                               algorithm = "Tsit5", sensitivity = "GaussAdjoint",
                                               TOL...)
        @test_throws ArgumentError forward_mlp(linear_mlp()..., θA, U0, [0.0, 1.0];
                                               algorithm = "Tsit5",
                                               sensitivity = "QuadratureAdjoint",
                                               quad_abstol = 1e-3, TOL...)
    end

    @testset "python_exception" begin
        err = try
            pybuiltins.int("not a number")
        catch e
            e
        end
        @test err isa PyException
        @test python_exception(err) !== nothing
        @test python_exception(ErrorException("plain")) === nothing
    end
end
